"""Melody conditioning for MusicGen-Melody checkpoints: the chroma of a clip, as the model was trained on it.

transformers' MusicgenMelodyFeatureExtractor computes it with torchaudio, which cannot be installed
beside the pinned torch here (and is absent on many user machines); this is the same algorithm with
the same parameters in torch (frames cut by hand, torch.fft.rfft), so that a training window's chroma
can be computed from the window's samples alone and still equal the whole clip's (chroma_frames):
  1. clips shorter than n_fft are zero-padded on both sides to n_fft;
  2. power spectrogram: periodic Hann window of n_fft (16384), hop 4096, centred with reflect
     padding, "window"-normalised (divided by sqrt(sum(window^2))), |X|^2 -- torchaudio's
     Spectrogram(n_fft, win_length=n_fft, hop_length, power=2, center=True, normalized=True);
  3. 12 chroma bins through librosa's chroma filter bank (transformers.audio_utils.chroma_filter_bank,
     tuning 0);
  4. each frame divided by its largest bin (eps 1e-6), then one-hot at its argmax.
At 32 kHz that is ~7.8 chroma frames per second; the model repeats or cuts them to its
config.chroma_length (235, ~30 s) itself. tests/test_chroma.py checks this against an independent
librosa implementation of the documented algorithm.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

N_FFT = 16384
HOP_LENGTH = 4096
NUM_CHROMA = 12
# What a cached chroma depends on besides the audio (data/code_cache.ChromaCache keys on it).
SETTINGS = {"n_fft": N_FFT, "hop_length": HOP_LENGTH, "num_chroma": NUM_CHROMA, "tuning": 0, "norm": "inf-argmax",
            "frames": "centred-reflect"}


@functools.lru_cache(maxsize=4)
def chroma_filters(sample_rate: int, n_fft: int = N_FFT, num_chroma: int = NUM_CHROMA) -> torch.Tensor:
    """(num_chroma, n_fft // 2 + 1) filter bank, librosa's (what the feature extractor uses)."""
    from transformers.audio_utils import chroma_filter_bank

    return torch.from_numpy(chroma_filter_bank(sampling_rate=sample_rate, num_frequency_bins=n_fft, tuning=0,
                                               num_chroma=num_chroma)).float()


def _frame_chroma(frames: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(F, n_fft) windows of samples -> (F, 12) max-normalised chroma: steps 2-4 of the module doc on
    frames already cut (so a window of a clip and the whole clip go through the same arithmetic)."""
    n_fft = frames.shape[-1]
    window = torch.hann_window(n_fft, dtype=frames.dtype, device=frames.device)
    power = torch.fft.rfft(frames * window).abs().pow(2) / window.pow(2).sum()  # (F, n_fft // 2 + 1)
    raw = power @ chroma_filters(sample_rate, n_fft).to(power.device).T  # (F, 12)
    return torch.nn.functional.normalize(raw, p=float("inf"), dim=-1, eps=1e-6)


def num_chroma_frames(num_samples: int) -> int:
    """Chroma frames of a clip of num_samples: centred STFT frames of the clip (zero-padded to n_fft)."""
    return 1 + max(int(num_samples), N_FFT) // HOP_LENGTH


def chroma_frames(read, num_samples: int, sample_rate: int, first: int = 0, count: int | None = None,
                  one_hot: bool = True, block: int = 256) -> torch.Tensor:
    """Frames [first, first + count) of the clip's chroma (cut to the frames it has), reading only
    the samples they cover: read(a, b) -> mono float32 samples [a, b) of the clip.

    Frame j is the n_fft samples centred on j * hop of the clip with `reflect` padding at both ends
    (torch.stft's center=True), so a window's frames are exactly the whole clip's frames cropped --
    the cached path (whole-clip chroma, cropped) and the uncached one (the window's samples) agree.
    Memory follows `block` frames (~34 MB), however long the clip. -> (frames, 12) float32.
    """
    total = num_chroma_frames(num_samples)
    first = min(max(int(first), 0), total)
    last = total if count is None else min(total, first + max(int(count), 0))
    if last <= first:
        return torch.zeros(0, NUM_CHROMA)
    half = N_FFT // 2
    n = int(num_samples)
    if n < N_FFT:  # zero-padded to n_fft first (step 1), then centred frames of that
        pad = N_FFT - n
        wav = torch.nn.functional.pad(torch.as_tensor(read(0, n), dtype=torch.float32), (pad // 2, pad // 2 + pad % 2))
        padded = torch.nn.functional.pad(wav[None, None], (half, half), mode="reflect")[0, 0]
        frames = padded.unfold(0, N_FFT, HOP_LENGTH)[first:last]
        out = [_frame_chroma(frames, sample_rate)]
    else:
        out = []
        for b0 in range(first, last, block):
            b1 = min(last, b0 + block)
            idx = torch.arange(b0 * HOP_LENGTH - half, (b1 - 1) * HOP_LENGTH + half)
            idx = torch.where(idx < 0, -idx, idx)  # reflect about the first sample...
            idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)  # ...and the last
            lo, hi = int(idx.min()), int(idx.max()) + 1
            seg = torch.as_tensor(read(lo, hi), dtype=torch.float32)
            frames = seg[idx - lo].unfold(0, N_FFT, HOP_LENGTH)
            out.append(_frame_chroma(frames, sample_rate))
    norm = torch.cat(out)
    if not one_hot:
        return norm
    return torch.zeros_like(norm).scatter_(-1, norm.argmax(-1, keepdim=True), 1.0)


@torch.no_grad()
def chroma_features(wav, sample_rate: int, one_hot: bool = True) -> torch.Tensor:
    """Mono audio (n,) or (B, n) at the model's rate -> (B, frames, 12) float32: one-hot chroma
    (one_hot=False: the max-normalised chroma before the argmax)."""
    wav = torch.as_tensor(np.asarray(wav, dtype=np.float32) if not isinstance(wav, torch.Tensor) else wav).float()
    wav = wav.reshape(1, -1) if wav.dim() == 1 else wav
    return torch.stack([chroma_frames(lambda a, b, row=row: row[a:b], row.shape[-1], sample_rate, one_hot=one_hot)
                        for row in wav])


def file_chroma(path, sample_rate: int, piece: int, first: int = 0, count: int | None = None) -> torch.Tensor:
    """chroma_frames of an audio file: its mono mix (the feature extractor averages stereo) at the
    model's rate, read piece by piece (audio.AudioPieces) -- the one reader the code store and the
    uncached training path share."""
    from musicgen_lora.audio.reader import AudioPieces

    audio = AudioPieces(path, sample_rate, piece, channels=1)
    return chroma_frames(lambda a, b: audio.read_range(a, b)[0], audio.num_samples, sample_rate, first, count)


def window_frames(start_sample: int, num_samples: int) -> tuple[int, int]:
    """The chroma frames that condition a training window of num_samples starting at start_sample:
    (first, count) -- the frame nearest the window's start, and as many frames as the feature
    extractor gives a clip of the window's length (what generate() sees for a melody that long)."""
    return (int(start_sample) + HOP_LENGTH // 2) // HOP_LENGTH, num_chroma_frames(num_samples)


def to_classes(chroma: torch.Tensor) -> torch.Tensor:
    """(frames, 12) one-hot -> (frames,) uint8 pitch classes: how the cache stores a clip's chroma."""
    return chroma.argmax(-1).to(torch.uint8)


def from_classes(classes: torch.Tensor) -> torch.Tensor:
    """(frames,) pitch classes -> (frames, 12) one-hot float32."""
    return torch.nn.functional.one_hot(classes.long(), NUM_CHROMA).float()


def null_chroma(length: int, num_chroma: int = NUM_CHROMA) -> torch.Tensor:
    """The "no melody" condition MusicGen-Melody uses (forward without input_features, and generate()'s
    classifier-free-guidance pair): one-hot at bin 0 in every frame."""
    out = torch.zeros(length, num_chroma)
    out[:, 0] = 1.0
    return out


def fit_chroma(chroma: torch.Tensor, length: int) -> torch.Tensor:
    """(frames, 12) -> (length, 12) exactly as the model treats its input (repeated until at least
    `length`, then cut), so chromas of different clips batch together with no change to any row."""
    if chroma.shape[0] < length:
        chroma = chroma.repeat(-(-length // chroma.shape[0]), 1)
    return chroma[:length]


def chroma_batch(chromas, length: int) -> torch.Tensor:
    """(B, length, 12) input_features: each row's (frames, 12) chroma fitted to the model's
    chroma_length (fit_chroma), or the null chroma where a row has none (None, or no frames)."""
    return torch.stack([fit_chroma(torch.as_tensor(c, dtype=torch.float32), length)
                        if c is not None and len(c) else null_chroma(length) for c in chromas])


def chroma_cosine(generated, reference, sample_rate: int, eps: float = 1e-8) -> float:
    """Mean per-frame cosine similarity of two clips' (max-normalised) chromagrams, over the frames
    both cover -- audiocraft's chroma_cosinesim. Clips: (samples,) or (samples, channels) (mixed to
    mid). 1.0: the same pitch classes frame by frame."""
    def mono(x):
        x = np.asarray(x, dtype=np.float32)
        return x.mean(axis=1) if x.ndim == 2 else x

    a = chroma_features(mono(generated), sample_rate, one_hot=False)[0]
    b = chroma_features(mono(reference), sample_rate, one_hot=False)[0]
    t = min(a.shape[0], b.shape[0])
    return float(torch.nn.functional.cosine_similarity(a[:t], b[:t], dim=-1, eps=eps).mean())
