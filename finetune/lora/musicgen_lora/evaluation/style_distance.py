"""Style distance: a Fréchet distance between EnCodec embeddings (an FAD that needs no download).

Embeddings are the model's own EnCodec encoder outputs before quantisation, one vector per 20 ms
frame. The distance between the Gaussians fitted to generated frames and to validation frames says
how far a model's output sits from the training style. Stereo clips are measured on their mid signal
(the mean of the channels), as the other clip metrics are.

Read it as relative: compare models against the same validation clips in one evaluation; the
absolute value depends on the codec, clip length and count. With few clips (8 x 15 s = 6,000
frames against a 128-dim covariance) it is noisy: differences of a few percent mean nothing.
"""
from __future__ import annotations

import numpy as np
import torch

from musicgen_lora.model.checkpoint import unwrap_base


@torch.no_grad()
def encodec_embeddings(model, clips: list[np.ndarray], batch_size: int = 4) -> np.ndarray:
    """(frames, dim) float64: all clips' encoder frames stacked (clips are encoded one batch at a time).
    clips: (samples,) mono or (samples, channels) as generated (mixed to mid here)."""
    clips = [c.mean(axis=1) if c.ndim == 2 else c for c in clips]
    base = unwrap_base(model)
    codec = base.audio_encoder
    param = next(codec.parameters())
    out = []
    for i in range(0, len(clips), batch_size):
        group = clips[i:i + batch_size]
        n = max(len(c) for c in group)
        x = torch.zeros(len(group), 1, n, dtype=param.dtype, device=param.device)
        lengths = []
        for j, c in enumerate(group):
            x[j, 0, :len(c)] = torch.as_tensor(c, dtype=param.dtype)
            lengths.append(len(c))
        emb = codec.encoder(x)  # (B, D, T), before the quantiser
        hop = n / emb.shape[-1]
        for j, length in enumerate(lengths):
            frames = max(1, int(length // hop))  # drop frames that only cover padding
            out.append(emb[j, :, :frames].T.double().cpu().numpy())
    return np.concatenate(out, axis=0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^1/2) between Gaussians fitted to two frame sets."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():  # near-singular product: nudge both diagonals, as FID code does
        eps = np.eye(cov_a.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    diff = mu_a - mu_b
    return float(max(0.0, diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean)))
