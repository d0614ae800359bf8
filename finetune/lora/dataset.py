"""Data for MusicGen LoRA training: metadata, audio loading, crop/pad, delay-pattern labels.

metadata.json (paths relative to the data dir) -- see DATA_PREPARATION.md:

    {"train": [{"audio": "train/clip_000.wav", "description": "lo-fi hip hop, vinyl crackle", ...}],
     "valid": [{"audio": "valid/clip_080.wav", "description": "..."}]}

A flat list of entries with a "split" field ("train"/"valid") is accepted too.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from common import UserError, read_json

AUDIO_KEYS = ("audio", "audio_path", "path", "file", "file_name")
TEXT_KEYS = ("description", "text", "caption", "prompt")
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
                 "eval": "valid", "test": "valid"}


# --------------------------------------------------------------------------------------------
# Labels: the one place that knows MusicGen's delay pattern.
# --------------------------------------------------------------------------------------------
def build_delay_pattern_labels(codes: torch.Tensor, num_valid_frames=None) -> torch.Tensor:
    """Turn EnCodec codes into MusicGen training labels.

    codes: (K, T) or (B, K, T) integer codes. num_valid_frames: None (all valid), an int, or a
    (B,) tensor/list -- frames at or past it come from padding.

    MusicGen predicts codebook k delayed by k frames, so labels have shape (B, T + K - 1, K) with
    labels[b, t + k, k] = codes[b, k, t] for valid frames t and -100 everywhere else (the delay's
    empty corners and every frame that covers padded audio). The model's forward shifts the labels
    right itself, so these labels line up with what `generate` samples.
    """
    squeeze = codes.dim() == 2
    if squeeze:
        codes = codes.unsqueeze(0)
    b, k, t = codes.shape
    if num_valid_frames is None:
        valid = torch.full((b,), t, dtype=torch.long)
    else:
        valid = torch.as_tensor(num_valid_frames, dtype=torch.long).reshape(-1).expand(b).clamp(0, t)
    frame_ok = torch.arange(t)[None, :] < valid[:, None].to(torch.long)  # (B, T)
    labels = torch.full((b, t + k - 1, k), -100, dtype=torch.long, device=codes.device)
    for cb in range(k):
        labels[:, cb:cb + t, cb] = torch.where(frame_ok.to(codes.device), codes[:, cb, :].long(),
                                               torch.tensor(-100, device=codes.device))
    return labels[0] if squeeze else labels


def valid_frames_for_samples(num_samples, hop_length: int):
    """Frames whose whole hop lies inside real (unpadded) audio."""
    if isinstance(num_samples, torch.Tensor):
        return torch.div(num_samples, hop_length, rounding_mode="floor")
    return int(num_samples) // hop_length


def num_frames_for_samples(num_samples: int, hop_length: int) -> int:
    """Frames EnCodec emits for a clip of this many samples (non-causal convs pad the tail)."""
    return math.ceil(num_samples / hop_length)


# --------------------------------------------------------------------------------------------
# Metadata and audio
# --------------------------------------------------------------------------------------------
@dataclass
class Clip:
    audio_path: Path
    description: str
    split: str
    duration: float | None = None  # seconds, when known


def _first(entry: dict, keys):
    for key in keys:
        if entry.get(key) not in (None, ""):
            return entry[key]
    return None


def read_metadata(data_dir, metadata_file="metadata.json", check_files=True) -> dict[str, list[Clip]]:
    """Read and validate metadata.json; returns {"train": [...], "valid": [...]}.

    Every problem names the file and the entry, so the user can fix it without a traceback.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: data directory not found; pass --data_dir pointing at the folder "
                        f"that holds metadata.json")
    meta_path = Path(metadata_file)
    if not meta_path.is_absolute():
        meta_path = data_dir / meta_path
    raw = read_json(meta_path, "metadata file (create it with prepare_data.py)")

    if isinstance(raw, dict) and any(k in raw for k in SPLIT_ALIASES):
        entries = []
        for key, items in raw.items():
            if key not in SPLIT_ALIASES:
                continue
            if not isinstance(items, list):
                raise UserError(f"{meta_path}: '{key}' must be a list of entries")
            entries += [(SPLIT_ALIASES[key], e) for e in items]
    elif isinstance(raw, dict) and isinstance(raw.get("clips"), list):
        entries = [(None, e) for e in raw["clips"]]
    elif isinstance(raw, list):
        entries = [(None, e) for e in raw]
    else:
        raise UserError(f"{meta_path}: expected {{\"train\": [...], \"valid\": [...]}} or a list of entries; "
                        f"see DATA_PREPARATION.md")

    splits = {"train": [], "valid": []}
    for i, (split, entry) in enumerate(entries):
        where = f"{meta_path}: entry {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} is not an object with 'audio' and 'description'")
        rel = _first(entry, AUDIO_KEYS)
        text = _first(entry, TEXT_KEYS)
        if rel is None:
            raise UserError(f"{where} has no audio path (one of {', '.join(AUDIO_KEYS)})")
        if text is None or not isinstance(text, str):
            raise UserError(f"{where} ({rel}) has no description text (one of {', '.join(TEXT_KEYS)})")
        split = split or SPLIT_ALIASES.get(str(entry.get("split", "train")).lower())
        if split is None:
            raise UserError(f"{where} ({rel}) has unknown split {entry.get('split')!r}; use train or valid")
        path = Path(rel)
        if not path.is_absolute():
            path = data_dir / path
        if check_files and not path.is_file():
            raise UserError(f"{path}: audio file not found (listed in {meta_path}, entry {i}); "
                            f"fix the path or remove the entry")
        duration = entry.get("duration")
        splits[split].append(Clip(path, text.strip(), split, float(duration) if duration else None))
    if not splits["train"] and not splits["valid"]:
        raise UserError(f"{meta_path}: no clips listed")
    return splits


def load_audio(path, sample_rate: int) -> np.ndarray:
    """Decode any format soundfile/librosa read, mix to mono float32, resample to sample_rate."""
    path = Path(path)
    try:
        try:
            wav, sr = sf.read(str(path), dtype="float32", always_2d=True)
            wav = wav.mean(axis=1)
        except (sf.LibsndfileError, RuntimeError, TypeError):
            import librosa  # slower, but decodes what libsndfile cannot (some mp3/m4a)

            wav, sr = librosa.load(str(path), sr=None, mono=True)
    except FileNotFoundError:
        raise UserError(f"{path}: audio file not found") from None
    except Exception as e:
        why = f"{type(e).__name__}: {e}" if str(e).strip() else f"{type(e).__name__}: no decoder reads it"
        raise UserError(f"{path}: cannot decode audio ({why}); re-export it as WAV/FLAC "
                        f"or remove it from the metadata") from None
    if wav.size == 0:
        raise UserError(f"{path}: audio file is empty; remove it from the metadata")
    if not np.all(np.isfinite(wav)):
        raise UserError(f"{path}: audio holds NaN/inf samples; re-export it")
    if sr != sample_rate:
        import librosa

        wav = librosa.resample(wav, orig_sr=sr, target_sr=sample_rate, res_type="soxr_hq")
    return np.ascontiguousarray(wav, dtype=np.float32)


def audio_duration(path) -> float | None:
    """Duration in seconds from the header when cheap; None if unknown."""
    try:
        return sf.info(str(path)).duration
    except Exception:
        return None


# --------------------------------------------------------------------------------------------
# Dataset and collation
# --------------------------------------------------------------------------------------------
def choose_frame_offset(total_valid_frames: int, window_frames: int, rng: np.random.Generator | None) -> int:
    """First code frame of the training window: random in training (rng given), 0 in validation."""
    if rng is None or total_valid_frames <= window_frames:
        return 0
    return int(rng.integers(0, total_valid_frames - window_frames + 1))


def crop_codes(codes: torch.Tensor, num_samples: int, frame_offset: int, window_frames: int, hop_length: int):
    """Window of a whole clip's codes (K, T) -> (codes (K, <= window), number of valid frames).

    Cached and uncached training both crop here, from the codes of the whole clip, so they see the
    same tokens: EnCodec's LSTM and non-causal convolutions make the codes of an audio crop differ
    from a crop of the codes near the crop's edges. Frames covering samples past the clip's end
    (its last partial hop) are not valid and get masked.
    """
    window = codes[:, frame_offset:frame_offset + window_frames]
    total_valid = valid_frames_for_samples(num_samples, hop_length)
    return window, max(0, min(window_frames, total_valid - frame_offset, window.shape[1]))


class MusicDataset(torch.utils.data.Dataset):
    """Clips with a training window picked in code frames. Padding happens in the collator, masked.

    With `code_files` (one code-cache entry per clip, see code_cache.py) an item carries the codes of
    the window; without, it carries the whole clip's audio and the window's frame offset, and the
    training step encodes the clip and crops the same window (modeling.codes_for_batch). Either way
    only one clip is in memory at a time: the dataset streams.

    Random windows are drawn from a generator seeded by (seed, epoch, index): the same run gives the
    same crops, and a resumed run gets the crops the uninterrupted one would have.
    """

    def __init__(self, clips: list[Clip], sample_rate: int, target_duration: float, train: bool, seed: int = 0,
                 hop_length: int = 640, code_files: list[str] | None = None):
        if code_files is not None and len(code_files) != len(clips):
            raise ValueError("one code file per clip expected")
        self.clips = clips
        self.sample_rate = sample_rate
        self.num_samples = int(round(target_duration * sample_rate))
        self.hop_length = hop_length
        self.window_frames = num_frames_for_samples(self.num_samples, hop_length)
        self.code_files = code_files
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, idx):
        clip = self.clips[idx]
        if self.code_files is not None:
            from code_cache import load_codes

            codes, num_samples = load_codes(self.code_files[idx])
        else:
            wav = load_audio(clip.audio_path, self.sample_rate)
            num_samples = len(wav)
        rng = np.random.default_rng((self.seed, self.epoch, idx)) if self.train else None
        offset = choose_frame_offset(valid_frames_for_samples(num_samples, self.hop_length), self.window_frames, rng)
        item = {"description": clip.description, "index": idx, "frame_offset": offset, "num_samples": num_samples}
        if self.code_files is not None:
            item["codes"], item["num_frames"] = crop_codes(codes, num_samples, offset, self.window_frames,
                                                           self.hop_length)
        else:
            item["audio"] = wav
        return item


class Collator:
    """Batches items and tokenizes descriptions.

    Code items -> `codes` (B, K, window) zero-padded + `num_frames` (B,) valid frames.
    Audio items -> `audio` (B, longest clip) zero-padded + `num_samples`, `frame_offset`, `window_frames`;
    modeling.codes_for_batch encodes each clip alone and crops the same window.
    Either way build_delay_pattern_labels masks every frame past the valid ones, so padding is never
    a target.
    """

    def __init__(self, processor, num_samples: int, hop_length: int = 640):
        self.tokenizer = processor.tokenizer
        self.window_frames = num_frames_for_samples(num_samples, hop_length)

    def __call__(self, items):
        b = len(items)
        text = self.tokenizer([it["description"] for it in items], padding=True, return_tensors="pt")
        batch = {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
                 "index": torch.tensor([it["index"] for it in items])}
        if all("codes" in it for it in items):
            k = items[0]["codes"].shape[0]
            codes = torch.zeros(b, k, self.window_frames, dtype=torch.long)
            for i, it in enumerate(items):
                codes[i, :, :it["codes"].shape[1]] = it["codes"][:, :self.window_frames]
            batch["codes"] = codes
            batch["num_frames"] = torch.tensor([it["num_frames"] for it in items], dtype=torch.long)
            return batch
        longest = max(it["num_samples"] for it in items)
        audio = torch.zeros(b, longest)
        for i, it in enumerate(items):
            audio[i, :it["num_samples"]] = torch.from_numpy(it["audio"])
        batch["audio"] = audio
        batch["num_samples"] = torch.tensor([it["num_samples"] for it in items], dtype=torch.long)
        batch["frame_offset"] = torch.tensor([it.get("frame_offset", 0) for it in items], dtype=torch.long)
        batch["window_frames"] = torch.full((b,), self.window_frames, dtype=torch.long)
        return batch


def batch_size_of(batch) -> int:
    return int(batch["input_ids"].shape[0])


def padding_report(clips: list[Clip], target_duration: float, hop_seconds: float = 0.02) -> dict:
    """Share of label frames that padding will mask, from header durations (no decoding)."""
    known = [c.duration if c.duration else audio_duration(c.audio_path) for c in clips]
    known = [d for d in known if d]
    if not known:
        return {"clips": len(clips), "known": 0, "padded_fraction": None}
    real = sum(min(d, target_duration) for d in known)
    frac = 1.0 - real / (target_duration * len(known))
    short = sum(1 for d in known if d < target_duration - hop_seconds)
    return {"clips": len(clips), "known": len(known), "padded_fraction": frac, "shorter_than_target": short}
