"""MusicGen's code layout: frames, the windows cut from a clip's codes, and the delay pattern that
training labels follow. A leaf module: torch and numpy only, no model, so every other module (data,
modeling, generation, the stereo and melody layouts to come) builds on the one definition here.

Shapes: codes (K, T) or (B, K, T) integer EnCodec codes, K codebooks of T frames; labels
(B, T + K/C - 1, K) with -100 where nothing is to be predicted, C the audio channels.

Stereo checkpoints (decoder.config.audio_channels = 2) run the mono codec once per channel and
interleave the codebooks [L0, R0, L1, R1, ...] (K = 8); rows 2c and 2c + 1 are both delayed by c,
as transformers' build_delay_pattern_mask and audiocraft's stereo pattern do.
"""
import math

import numpy as np
import torch

# A mono MusicGen's codebooks (stereo checkpoints interleave two channels: 8). With a model at hand
# its own count wins; this is for tools that run without one (test_dataset.py).
MUSICGEN_CODEBOOKS = 4

def codebook_delays(num_codebooks: int, audio_channels: int = 1) -> list[int]:
    """Frames by which each codebook row is delayed: [0, 1, 2, 3] mono, [0, 0, 1, 1, 2, 2, 3, 3] stereo."""
    if audio_channels < 1 or num_codebooks % audio_channels:
        raise ValueError(f"{num_codebooks} codebooks cannot be split over {audio_channels} audio channels")
    return [k // audio_channels for k in range(num_codebooks)]


def interleave_channels(per_channel: list[torch.Tensor]) -> torch.Tensor:
    """Codes of each channel ((K_c, T) or (B, K_c, T)) -> the decoder's rows [L0, R0, L1, R1, ...]."""
    if len(per_channel) == 1:
        return per_channel[0]
    stacked = torch.stack(per_channel, dim=-2)  # (..., K_c, C, T)
    return stacked.flatten(-3, -2)


def split_channels(codes: torch.Tensor, audio_channels: int) -> list[torch.Tensor]:
    """The inverse of interleave_channels: rows c, c + C, c + 2C, ... belong to channel c."""
    return [codes[..., c::audio_channels, :] for c in range(audio_channels)]


def build_delay_pattern_labels(codes: torch.Tensor, num_valid_frames=None, audio_channels: int = 1) -> torch.Tensor:
    """Turn EnCodec codes into MusicGen training labels.

    codes: (K, T) or (B, K, T) integer codes (stereo: rows interleaved [L0, R0, L1, ...]).
    num_valid_frames: None (all valid), an int, or a (B,) tensor/list -- frames at or past it come
    from padding. audio_channels: the decoder's (1, or 2 for stereo checkpoints).

    MusicGen predicts codebook row k delayed by d_k = k // audio_channels frames, so labels have
    shape (B, T + K/C - 1, K) with labels[b, t + d_k, k] = codes[b, k, t] for valid frames t and
    -100 everywhere else (the delay's empty corners and every frame that covers padded audio). The
    model's forward shifts the labels right itself, so these labels line up with what `generate`
    samples.
    """
    squeeze = codes.dim() == 2
    if squeeze:
        codes = codes.unsqueeze(0)
    b, k, t = codes.shape
    delays = codebook_delays(k, audio_channels)
    if num_valid_frames is None:
        valid = torch.full((b,), t, dtype=torch.long)
    else:
        valid = torch.as_tensor(num_valid_frames, dtype=torch.long).reshape(-1).expand(b).clamp(0, t)
    frame_ok = torch.arange(t)[None, :] < valid[:, None].to(torch.long)  # (B, T)
    labels = torch.full((b, t + delays[-1], k), -100, dtype=torch.long, device=codes.device)
    for cb, d in enumerate(delays):
        labels[:, d:d + t, cb] = torch.where(frame_ok.to(codes.device), codes[:, cb, :].long(),
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
    both crop here, from codes encoded piece by piece (audio.reader.AudioPieces), so they see the same tokens:
    EnCodec's LSTM and non-causal convolutions make the codes of an audio crop differ from a crop
    of the codes near the crop's edges. Frames covering samples past the clip's end (its last
    partial hop) are not valid and get masked.
    """
    start = frame_offset - codes_start_frame
    window = codes[:, start:start + window_frames]
    total_valid = valid_frames_for_samples(num_samples, hop_length)
    return window, max(0, min(window_frames, total_valid - frame_offset, window.shape[1]))
