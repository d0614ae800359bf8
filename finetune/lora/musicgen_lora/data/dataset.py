"""The training dataset: a window of each clip per epoch (random in training, the start in
validation), read from the code store (training's one route) or, for the diagnostic scripts that
have no store, as the audio under it; and the collator that batches windows with their padding
masked. Labels follow codes.build_delay_pattern_labels.
"""
import numpy as np
import torch

from musicgen_lora.audio import chroma as chroma_lib
from musicgen_lora.audio.codes import choose_frame_offset, crop_codes, num_frames_for_samples, valid_frames_for_samples
from musicgen_lora.audio.reader import AudioPieces, audio_duration
from musicgen_lora.audio.reader import piece_samples as default_piece_samples
from musicgen_lora.core.common import log
from musicgen_lora.data.metadata import Clip, drop_words, merge_music_info, tokenize_text


class MusicDataset(torch.utils.data.Dataset):
    """Clips with a training window picked in code frames. Padding happens in the collator, masked.

    With `store` (code_store.CodeStore; each clip's `store_index` is its row, store_update.fill_store)
    an item carries the codes of the window, read from the store. Without (check_dataset.py,
    check_model.py, evaluate.py's held-out loss), it carries the audio of the pieces under the window
    (audio.reader.AudioPieces) and where they start, and model.loss.codes_for_batch encodes those
    pieces and crops the same window: the same codes (tests/test_code_store.py). Either way an item
    costs memory in proportion to the window, never to the clip: the dataset streams.

    Random windows -- and, with word_dropout, the words of the description each clip is trained with
    (metadata.drop_words, as audiocraft's T5 conditioner does) -- are drawn from a generator seeded by
    (seed, epoch, index): the same run gives the same crops and texts, and a resumed run gets the ones
    the uninterrupted run would have. Validation (train=False) keeps every word and the start. With
    merge_tempo_key_p, a clip's bpm and key (metadata "bpm"/"key") are merged into its description
    first, audiocraft's rule (metadata.merge_music_info).

    MusicGen-Melody (chroma=True): an item also carries `chroma`, the (frames, 12) chroma of the same
    window of the clip's conditioning audio (Clip.melody_path; chroma.window_frames) -- read from its
    row in the store (`chroma_rows`, one store index per clip) or computed from the window's samples,
    which chroma.chroma_frames makes the same frames. With chroma_dropout (train
    only, audiocraft's 0.5 for melody) it is None: the null chroma, what generate() uses without a
    melody. `melody` swaps the condition for diagnostics: "own" (the clip's), "none" (null chroma),
    "other" (a wrong melody: the next clip's, same window; a set of one clip gets its own moved by a
    tritone -- the same rhythm, the wrong notes).
    """

    MELODY_MODES = ("own", "none", "other")

    def __init__(self, clips: list[Clip], sample_rate: int, target_duration: float, train: bool, seed: int = 0, *,
                 hop_length: int, piece_samples: int | None = None, audio_channels: int, word_dropout: float = 0.0,
                 merge_tempo_key_p: float = 0.0,
                 chroma: bool = False, chroma_rows: list[int] | None = None, chroma_dropout: float = 0.0, store=None):
        if store is not None and any(c.store_index is None for c in clips):
            raise ValueError("a code store serves clips with a store_index only (store_update.fill_store)")
        if chroma_rows is not None and (store is None or len(chroma_rows) != len(clips)):
            raise ValueError("one chroma row of the store per clip expected")
        self.clips = clips
        self.sample_rate = sample_rate
        self.num_samples = int(round(target_duration * sample_rate))
        self.hop_length = hop_length
        self.audio_channels = audio_channels  # the model's: AudioPieces mixes or up-mixes to it
        self.piece_samples = piece_samples or default_piece_samples(sample_rate, hop_length)
        self.window_frames = num_frames_for_samples(self.num_samples, hop_length)
        self.store = store  # code_store.CodeStore: each item reads only its window's frames
        self.word_dropout = word_dropout if train else 0.0
        self.merge_tempo_key_p = merge_tempo_key_p if train else 0.0
        self.chroma = chroma or chroma_rows is not None
        self.chroma_rows = chroma_rows
        self.chroma_dropout = chroma_dropout if train else 0.0
        self.melody = "own"
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
        if self.store is not None:
            num_samples = self.store.num_samples(clip.store_index)
        else:
            audio = AudioPieces(clip.audio_path, self.sample_rate, self.piece_samples, self.audio_channels)
            num_samples = audio.num_samples
        rng = np.random.default_rng((self.seed, self.epoch, idx)) if self.train else None
        offset = frame_offset if frame_offset is not None else choose_frame_offset(
            valid_frames_for_samples(num_samples, self.hop_length), self.window_frames, rng)
        description = clip.description
        if rng is not None:  # audiocraft's order: the dataset merges the metadata, the conditioner drops words
            description = merge_music_info(description, clip.bpm, clip.key, rng, self.merge_tempo_key_p)
            description = drop_words(description, self.word_dropout, rng)
        item = {"description": description, "index": idx, "frame_offset": offset, "num_samples": num_samples}
        if self.store is not None:  # the store reads from the offset on: crop as codes starting there
            window = self.store.window(clip.store_index, offset, self.window_frames)
            item["codes"], item["num_frames"] = crop_codes(window, num_samples, offset, self.window_frames,
                                                           self.hop_length, codes_start_frame=offset)
        else:
            pieces = audio.pieces_for_frames(offset, self.window_frames, self.hop_length)
            item["audio"] = np.concatenate([audio.read(j) for j in pieces], axis=-1)  # (channels, samples)
            item["audio_start_frame"] = pieces[0] * (self.piece_samples // self.hop_length)
            item["piece_samples"] = self.piece_samples
        if self.chroma:
            drop = rng is not None and self.chroma_dropout > 0 and rng.random() < self.chroma_dropout
            item["chroma"] = None if drop else self.window_chroma(idx, offset)
        return item

    def window_chroma(self, idx: int, frame_offset: int):
        """(frames, 12) chroma of the window at frame_offset, from the clip's conditioning audio (its
        store row's frames, or the window's own samples: the same frames); None for the null chroma."""
        if self.melody == "none":
            return None
        source = (idx + 1) % len(self.clips) if self.melody == "other" else idx
        first, count = chroma_lib.window_frames(frame_offset * self.hop_length, self.num_samples)
        if self.chroma_rows is not None:
            frames = chroma_lib.from_classes(self.store.chroma(self.chroma_rows[source], first, count))
        else:
            frames = chroma_lib.file_chroma(self.clips[source].melody_path, self.sample_rate, self.piece_samples,
                                            first, count)
        if self.melody == "other" and source == idx:
            frames = frames.roll(6, dims=-1)
        return frames if len(frames) else None  # a condition file shorter than this window's start


class Collator:
    """Batches items and tokenizes descriptions.

    Code items -> `codes` (B, K, window) zero-padded + `num_frames` (B,) valid frames.
    Audio items -> `audio` (B, C, longest) zero-padded + `audio_samples` (its real length per row),
    `audio_start_frame`, `piece_samples`, `num_samples` (the whole clip's), `frame_offset`,
    `window_frames`; model.loss.codes_for_batch encodes each row's pieces alone and crops the window.
    Either way build_delay_pattern_labels masks every frame past the valid ones, so padding is never
    a target. MusicGen-Melody (chroma_length, the model's): `input_features` (B, chroma_length, 12),
    each item's chroma fitted as the model would (chroma.chroma_batch; the null chroma for None).
    """

    def __init__(self, processor, num_samples: int, hop_length: int, chroma_length: int | None = None):
        self.tokenizer = processor.tokenizer
        self.window_frames = num_frames_for_samples(num_samples, hop_length)
        self.chroma_length = chroma_length

    def __call__(self, items):
        b = len(items)
        text = tokenize_text(self.tokenizer, [it["description"] for it in items])
        batch = {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
                 "index": torch.tensor([it["index"] for it in items])}
        if self.chroma_length:
            batch["input_features"] = chroma_lib.chroma_batch([it.get("chroma") for it in items], self.chroma_length)
        if all("codes" in it for it in items):
            k = items[0]["codes"].shape[0]
            codes = torch.zeros(b, k, self.window_frames, dtype=torch.long)
            for i, it in enumerate(items):
                codes[i, :, :it["codes"].shape[1]] = it["codes"][:, :self.window_frames]
            batch["codes"] = codes
            batch["num_frames"] = torch.tensor([it["num_frames"] for it in items], dtype=torch.long)
            return batch
        longest = max(it["audio"].shape[-1] for it in items)
        audio = torch.zeros(b, items[0]["audio"].shape[0], longest)
        for i, it in enumerate(items):
            audio[i, :, :it["audio"].shape[-1]] = torch.from_numpy(it["audio"])
        batch["audio"] = audio
        batch["audio_samples"] = torch.tensor([it["audio"].shape[-1] for it in items], dtype=torch.long)
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


def check_condition_audio(clips: list[Clip], melody: bool, tolerance: float = 1.0) -> int:
    """Warn about `condition_audio` a run will not use (a text-only model) or whose length differs
    from its clip's (header durations; windows take the same seconds of both files, so a shorter
    stem leaves late windows with less melody, or none). Returns how many clips name one."""
    named = [c for c in clips if c.condition_path is not None]
    if named and not melody:
        log.warning(f"warning: {len(named)} clip(s) name condition_audio (e.g. {named[0].where}), which only "
                    f"MusicGen-Melody checkpoints use; this model is text-only: ignored")
        return len(named)
    off = []
    for clip in named:
        a, b = audio_duration(clip.audio_path), audio_duration(clip.condition_path)
        if a is not None and b is not None and abs(a - b) > tolerance:
            off.append(f"{clip.where} ({clip.condition_path.name} {b:.1f} s vs {clip.audio_path.name} {a:.1f} s)")
    if off:
        log.warning(f"warning: {len(off)} condition_audio file(s) differ in length from their clip by over "
                    f"{tolerance:g} s, e.g. {off[0]}: windows take the same seconds of both, so they may hear the "
                    f"wrong part of the melody; trim them to match")
    return len(named)
