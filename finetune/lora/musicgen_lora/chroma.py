"""Melody conditioning for MusicGen-Melody checkpoints: the chroma of a clip, as the model was trained on it.

transformers' MusicgenMelodyFeatureExtractor computes it with torchaudio, which cannot be installed
beside the pinned torch here (and is absent on many user machines); this is the same algorithm with
the same parameters on torch.stft:
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


@functools.lru_cache(maxsize=4)
def chroma_filters(sample_rate: int, n_fft: int = N_FFT, num_chroma: int = NUM_CHROMA) -> torch.Tensor:
    """(num_chroma, n_fft // 2 + 1) filter bank, librosa's (what the feature extractor uses)."""
    from transformers.audio_utils import chroma_filter_bank

    return torch.from_numpy(chroma_filter_bank(sampling_rate=sample_rate, num_frequency_bins=n_fft, tuning=0,
                                               num_chroma=num_chroma)).float()


def power_spectrogram(wav: torch.Tensor, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH) -> torch.Tensor:
    """(B, n) -> (B, n_fft // 2 + 1, frames): step 2 of the module doc."""
    window = torch.hann_window(n_fft, dtype=wav.dtype, device=wav.device)
    spec = torch.stft(wav, n_fft, hop_length=hop_length, win_length=n_fft, window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    return spec.abs().pow(2) / window.pow(2).sum()


@torch.no_grad()
def chroma_features(wav, sample_rate: int, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH,
                    one_hot: bool = True) -> torch.Tensor:
    """Mono audio (n,) or (B, n) at the model's rate -> (B, frames, 12) float32: one-hot chroma
    (one_hot=False: the max-normalised chroma before the argmax)."""
    wav = torch.as_tensor(np.asarray(wav, dtype=np.float32) if not isinstance(wav, torch.Tensor) else wav).float()
    wav = wav.reshape(1, -1) if wav.dim() == 1 else wav
    if wav.shape[-1] < n_fft:
        pad = n_fft - wav.shape[-1]
        wav = torch.nn.functional.pad(wav, (pad // 2, pad // 2 + pad % 2))
    spec = power_spectrogram(wav, n_fft, hop_length)
    raw = torch.einsum("cf,bft->bct", chroma_filters(sample_rate, n_fft).to(spec.device), spec)
    norm = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)  # (B, T, 12)
    if not one_hot:
        return norm
    return torch.zeros_like(norm).scatter_(-1, norm.argmax(-1, keepdim=True), 1.0)


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
