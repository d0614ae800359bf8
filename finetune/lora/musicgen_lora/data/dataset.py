"""Data for MusicGen LoRA training: metadata, audio loading, crop/pad, delay-pattern labels.

metadata.json (paths relative to the data dir) -- see DATA_PREPARATION.md:

    {"train": [{"audio": "train/clip_000.wav", "description": "lo-fi hip hop, vinyl crackle", ...}],
     "valid": [{"audio": "valid/clip_080.wav", "description": "..."}]}

A flat list of entries with a "split" field ("train"/"valid") is accepted too.
"""
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicgen_lora.audio import AudioPieces, audio_duration, piece_samples as default_piece_samples
from musicgen_lora.common import UserError, log, read_json

AUDIO_KEYS = ("audio", "audio_path", "path", "file", "file_name")
TEXT_KEYS = ("description", "text", "caption", "prompt")
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
                 "eval": "valid", "test": "valid"}
# Descriptions and prompts are cut to this many T5 tokens (T5's own training length). Unbounded, a
# 100 KB description made the text encoder's attention take 23 GB.
MAX_TEXT_TOKENS = 512


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
    where: str = ""  # "metadata.json: entry 3", for messages about this clip


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
            entries += [(SPLIT_ALIASES[key], f'"{key}" entry {j}', e) for j, e in enumerate(items)]
    elif isinstance(raw, dict) and isinstance(raw.get("clips"), list):
        entries = [(None, f'"clips" entry {j}', e) for j, e in enumerate(raw["clips"])]
    elif isinstance(raw, list):
        entries = [(None, f"entry {j}", e) for j, e in enumerate(raw)]
    else:
        raise UserError(f"{meta_path}: expected {{\"train\": [...], \"valid\": [...]}} or a list of entries; "
                        f"see DATA_PREPARATION.md")

    splits = {"train": [], "valid": []}
    for split, label, entry in entries:
        where = f"{meta_path}: {label}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} is not an object with 'audio' and 'description'")
        rel = _first(entry, AUDIO_KEYS)
        text = _first(entry, TEXT_KEYS)
        if rel is None:
            raise UserError(f"{where} has no audio path (one of {', '.join(AUDIO_KEYS)})")
        if not isinstance(rel, str):
            raise UserError(f"{where}: the audio path must be a string like \"train/clip_000.wav\", got {rel!r}")
        if text is None or not isinstance(text, str):
            raise UserError(f"{where} ({rel}) has no description text (one of {', '.join(TEXT_KEYS)})")
        raw_split = entry.get("split", "train")
        split = split or (SPLIT_ALIASES.get(raw_split.lower()) if isinstance(raw_split, str) else None)
        if split is None:
            raise UserError(f"{where} ({rel}) has unknown split {raw_split!r}; use train or valid")
        path = Path(rel)
        if not path.is_absolute():
            path = data_dir / path
        if check_files and not path.is_file():
            raise UserError(f"{path}: audio file not found (listed in {meta_path}, {label}); "
                            f"fix the path or remove the entry")
        duration = entry.get("duration")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                     or not math.isfinite(duration) or duration < 0):
            raise UserError(f"{where} ({rel}): 'duration' must be seconds as a number (e.g. 15.0), got "
                            f"{duration!r}; fix it or remove the key")
        splits[split].append(Clip(path, text.strip(), split, float(duration) if duration else None, where))
    if not splits["train"] and not splits["valid"]:
        raise UserError(f"{meta_path}: no clips listed")
    warn_duplicates(splits, meta_path)
    return splits


def warn_duplicates(splits: dict, meta_path: Path):
    """Warn about audio listed twice in a split (it counts double) and, above all, audio in both
    train and valid: validating on training clips reports a loss that means nothing."""
    def key(clip):
        return os.path.realpath(clip.audio_path)

    for name, clips in splits.items():
        seen, repeats = {}, []
        for clip in clips:
            if key(clip) in seen:
                repeats.append(f"{clip.audio_path.name} ({seen[key(clip)].where.rsplit(': ', 1)[-1]} and "
                               f"{clip.where.rsplit(': ', 1)[-1]})")
            seen.setdefault(key(clip), clip)
        if repeats:
            log.warning(f"warning: {meta_path}: {len(repeats)} clip(s) listed twice in {name}, e.g. "
                        f"{'; '.join(repeats[:3])}: each copy is trained/validated on again")
    both = sorted({key(c) for c in splits["train"]} & {key(c) for c in splits["valid"]})
    if both:
        shown = ", ".join(Path(p).name for p in both[:3]) + (f" and {len(both) - 3} more" if len(both) > 3 else "")
        log.warning(f"warning: {meta_path}: {len(both)} clip(s) are in both train and valid ({shown}): the "
                    f"validation loss on them measures memory, not generalisation; remove them from one split")


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------
def text_token_limit(tokenizer) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    return min(MAX_TEXT_TOKENS, limit) if isinstance(limit, int) and limit > 0 else MAX_TEXT_TOKENS


def tokenize_text(tokenizer, texts):
    """Descriptions/prompts -> padded token tensors, each cut to text_token_limit tokens."""
    return tokenizer(list(texts), padding=True, truncation=True, max_length=text_token_limit(tokenizer),
                     return_tensors="pt")


def report_long_descriptions(tokenizer, items) -> int:
    """Warn once per text that tokenize_text will cut. items: Clips, or (where, text) pairs.
    Returns how many were cut."""
    limit = text_token_limit(tokenizer)
    cut = 0
    for item in items:
        where, text = (item.where or str(item.audio_path), item.description) if isinstance(item, Clip) else item
        if len(text) + 2 <= limit:  # a token covers at least one character (plus "▁" and </s>)
            continue
        n = len(tokenizer(text)["input_ids"])
        if n > limit:
            cut += 1
            log.warning(f"warning: {where}: the text is {n} tokens long; only its first {limit} are used")
    return cut


# --------------------------------------------------------------------------------------------
# Dataset and collation
# --------------------------------------------------------------------------------------------
def choose_frame_offset(total_valid_frames: int, window_frames: int, rng: np.random.Generator | None) -> int:
    """First code frame of the training window: random in training (rng given), 0 in validation."""
    if rng is None or total_valid_frames <= window_frames:
        return 0
    return int(rng.integers(0, total_valid_frames - window_frames + 1))


def crop_codes(codes: torch.Tensor, num_samples: int, frame_offset: int, window_frames: int, hop_length: int,
               codes_start_frame: int = 0):
    """Window of a clip's codes (K, T) -> (codes (K, <= window), number of valid frames).

    `codes` start at frame `codes_start_frame` of the clip (the code cache holds the whole clip:
    0; uncached training encodes only the pieces under the window). Cached and uncached training
    both crop here, from codes encoded piece by piece (audio_io), so they see the same tokens:
    EnCodec's LSTM and non-causal convolutions make the codes of an audio crop differ from a crop
    of the codes near the crop's edges. Frames covering samples past the clip's end (its last
    partial hop) are not valid and get masked.
    """
    start = frame_offset - codes_start_frame
    window = codes[:, start:start + window_frames]
    total_valid = valid_frames_for_samples(num_samples, hop_length)
    return window, max(0, min(window_frames, total_valid - frame_offset, window.shape[1]))


class MusicDataset(torch.utils.data.Dataset):
    """Clips with a training window picked in code frames. Padding happens in the collator, masked.

    With `code_files` (one code-cache entry per clip, see code_cache.py) an item carries the codes of
    the window; without, it carries the audio of the pieces under the window (audio_io.AudioPieces)
    and where they start, and the training step encodes those pieces and crops the same window
    (modeling.codes_for_batch). Either way an item costs memory in proportion to the window, never
    to the clip: the dataset streams.

    Random windows are drawn from a generator seeded by (seed, epoch, index): the same run gives the
    same crops, and a resumed run gets the crops the uninterrupted one would have.
    """

    def __init__(self, clips: list[Clip], sample_rate: int, target_duration: float, train: bool, seed: int = 0,
                 hop_length: int = 640, code_files: list[str] | None = None, piece_samples: int | None = None):
        if code_files is not None and len(code_files) != len(clips):
            raise ValueError("one code file per clip expected")
        self.clips = clips
        self.sample_rate = sample_rate
        self.num_samples = int(round(target_duration * sample_rate))
        self.hop_length = hop_length
        self.piece_samples = piece_samples or default_piece_samples(sample_rate, hop_length)
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
        return self.item(idx)

    def item(self, idx: int, frame_offset: int | None = None) -> dict:
        """Clip `idx` with its training window: the one drawn for this epoch (or the start, in
        validation), or the window at `frame_offset` when given."""
        clip = self.clips[idx]
        if self.code_files is not None:
            from musicgen_lora.data.code_cache import load_codes

            codes, num_samples = load_codes(self.code_files[idx])
        else:
            audio = AudioPieces(clip.audio_path, self.sample_rate, self.piece_samples)
            num_samples = audio.num_samples
        rng = np.random.default_rng((self.seed, self.epoch, idx)) if self.train else None
        offset = frame_offset if frame_offset is not None else choose_frame_offset(
            valid_frames_for_samples(num_samples, self.hop_length), self.window_frames, rng)
        item = {"description": clip.description, "index": idx, "frame_offset": offset, "num_samples": num_samples}
        if self.code_files is not None:
            item["codes"], item["num_frames"] = crop_codes(codes, num_samples, offset, self.window_frames,
                                                           self.hop_length)
        else:
            pieces = audio.pieces_for_frames(offset, self.window_frames, self.hop_length)
            item["audio"] = np.concatenate([audio.read(j) for j in pieces])
            item["audio_start_frame"] = pieces[0] * (self.piece_samples // self.hop_length)
            item["piece_samples"] = self.piece_samples
        return item


class Collator:
    """Batches items and tokenizes descriptions.

    Code items -> `codes` (B, K, window) zero-padded + `num_frames` (B,) valid frames.
    Audio items -> `audio` (B, longest) zero-padded + `audio_samples` (its real length per row),
    `audio_start_frame`, `piece_samples`, `num_samples` (the whole clip's), `frame_offset`,
    `window_frames`; modeling.codes_for_batch encodes each row's pieces alone and crops the window.
    Either way build_delay_pattern_labels masks every frame past the valid ones, so padding is never
    a target.
    """

    def __init__(self, processor, num_samples: int, hop_length: int = 640):
        self.tokenizer = processor.tokenizer
        self.window_frames = num_frames_for_samples(num_samples, hop_length)

    def __call__(self, items):
        b = len(items)
        text = tokenize_text(self.tokenizer, [it["description"] for it in items])
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
        longest = max(len(it["audio"]) for it in items)
        audio = torch.zeros(b, longest)
        for i, it in enumerate(items):
            audio[i, :len(it["audio"])] = torch.from_numpy(it["audio"])
        batch["audio"] = audio
        batch["audio_samples"] = torch.tensor([len(it["audio"]) for it in items], dtype=torch.long)
        batch["audio_start_frame"] = torch.tensor([it.get("audio_start_frame", 0) for it in items], dtype=torch.long)
        batch["piece_samples"] = torch.tensor([it.get("piece_samples", longest) for it in items], dtype=torch.long)
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
