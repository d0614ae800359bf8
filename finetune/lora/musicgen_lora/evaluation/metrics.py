"""Per-clip diagnostics that catch the failures heard in earlier runs: fading out, silence, noise, clipping.

Every threshold is a named constant here, with the reason for its value; tests check each one on
constructed signals (a steady chord with a beat passes; the same chord fading 30 dB over 15 s is
flagged fades_out; white noise is flagged noisy; 8 s of silence shows in the silence ratio).

`score_clip(audio, sample_rate)` -> {"metrics": {...}, "flags": {...}, "loudness_trajectory": [...]}
"""
from __future__ import annotations

import math

import numpy as np

# Loudness (ITU-R BS.1770 via pyloudnorm). Values below the standard's absolute gate (-70 LUFS)
# mean "silence"; they are reported as -70 so means and slopes stay finite.
LOUDNESS_FLOOR_LUFS = -70.0
# Short-term loudness is EBU R128's 3 s window; one value per second (hop 1 s).
SHORT_TERM_WINDOW_S = 3.0
TRAJECTORY_HOP_S = 1.0
# fades_out: the last third of the clip is more than 10 dB quieter than the first third. Ordinary
# dynamics inside a 15 s excerpt (a break, a drop) stay within about 6 dB on third-averages; a clip
# the listener describes as "getting quieter and quieter" loses far more (a 30 dB fade gives ~20 dB).
FADE_DROP_DB = 10.0

# Silence: 50 ms frames whose RMS is below -60 dBFS (inaudible at normal listening levels; a
# normalised mix sits around -20 dBFS RMS). `silent` flag: more than 20% of the clip is silent.
SILENCE_FRAME_S = 0.05
SILENCE_DBFS = -60.0
SILENT_RATIO_FLAG = 0.2

# Noise-likeness: spectral flatness (geometric / arithmetic mean of the power spectrum, 50 Hz -
# 15 kHz) of the power spectrum averaged over 0.5 s segments, then averaged over non-silent
# segments. White noise gives ~0.95; tonal music < 0.05; dense drum-heavy mixes stay below ~0.3
# because music's energy falls steeply with frequency. `noisy` above 0.5.
FLATNESS_SEGMENT_S = 0.5
FLATNESS_BAND_HZ = (50.0, 15000.0)
NOISY_FLATNESS = 0.5

# Clipping: samples at or beyond 0.999 of full scale; `clipping` flag above 0.1% of samples
# (a few isolated full-scale peaks are inaudible, sustained clipping is not).
CLIP_LEVEL = 0.999
CLIPPING_RATIO_FLAG = 0.001



def _finite_lufs(value: float) -> float:
    return float(value) if math.isfinite(value) and value > LOUDNESS_FLOOR_LUFS else LOUDNESS_FLOOR_LUFS


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """BS.1770 integrated loudness in LUFS (gated), floored at -70."""
    import pyloudnorm

    x = np.asarray(audio, dtype=np.float64)
    block = 0.4
    if len(x) < int(block * sample_rate):
        x = np.pad(x, (0, int(block * sample_rate) - len(x)))
    return _finite_lufs(pyloudnorm.Meter(sample_rate, block_size=block).integrated_loudness(x))


def loudness_trajectory(audio: np.ndarray, sample_rate: int) -> tuple[list[float], list[float]]:
    """Short-term loudness (3 s windows, BS.1770) every second: (window centre times, LUFS values).

    Clips shorter than 3 s get windows as long as the clip (at least 0.4 s).
    """
    n = len(audio)
    dur = n / sample_rate
    win = min(SHORT_TERM_WINDOW_S, max(dur, 0.4))
    starts = np.arange(0.0, max(dur - win, 0.0) + 1e-9, TRAJECTORY_HOP_S)
    times, values = [], []
    for s in starts:
        a = int(round(s * sample_rate))
        seg = audio[a:a + int(round(win * sample_rate))]
        times.append(float(s + win / 2))
        values.append(integrated_loudness(seg, sample_rate))
    return times, values


def fit_slope(times, values) -> float:
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.asarray(times), np.asarray(values), 1)[0])


def third_drop(times, values, duration: float) -> float:
    """Mean loudness of windows centred in the first third minus that of the last third (dB)."""
    t, v = np.asarray(times), np.asarray(values)
    if len(v) < 2:
        return 0.0
    first, last = v[t <= duration / 3], v[t >= 2 * duration / 3]
    first = first if first.size else v[:1]
    last = last if last.size else v[-1:]
    return float(first.mean() - last.mean())


def silence_stats(audio: np.ndarray, sample_rate: int) -> tuple[float, float]:
    """(share of 50 ms frames below -60 dBFS RMS, longest run of such frames in seconds)."""
    hop = max(1, int(round(SILENCE_FRAME_S * sample_rate)))
    frames = len(audio) // hop
    if frames == 0:
        return 1.0, len(audio) / sample_rate
    x = np.asarray(audio[:frames * hop], dtype=np.float64).reshape(frames, hop)
    rms_db = 10 * np.log10(np.mean(x ** 2, axis=1) + 1e-20)
    silent = rms_db < SILENCE_DBFS
    longest = run = 0
    for s in silent:
        run = run + 1 if s else 0
        longest = max(longest, run)
    return float(silent.mean()), longest * hop / sample_rate


def spectral_flatness(audio: np.ndarray, sample_rate: int) -> float | None:
    """Mean flatness of 0.5 s averaged power spectra over non-silent segments; None if all silent."""
    n_fft, hop = 2048, 512
    x = np.asarray(audio, dtype=np.float64)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft), axis=1)) ** 2  # (frames, bins)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    band = (freqs >= FLATNESS_BAND_HZ[0]) & (freqs <= min(FLATNESS_BAND_HZ[1], sample_rate / 2))
    per_seg = max(1, int(round(FLATNESS_SEGMENT_S * sample_rate / hop)))
    values = []
    for s in range(0, frames, per_seg):
        seg = x[s * hop: (s + per_seg - 1) * hop + n_fft]
        if 10 * np.log10(np.mean(seg ** 2) + 1e-20) < SILENCE_DBFS:
            continue
        p = power[s:s + per_seg, band].mean(axis=0) + 1e-20
        values.append(float(np.exp(np.mean(np.log(p))) / np.mean(p)))
    return float(np.mean(values)) if values else None


def clipping_ratio(audio: np.ndarray) -> float:
    return float(np.mean(np.abs(audio) >= CLIP_LEVEL)) if len(audio) else 0.0


def score_clip(audio: np.ndarray, sample_rate: int) -> dict:
    """All per-clip numbers and flags for one mono clip."""
    audio = np.asarray(audio, dtype=np.float32)
    duration = len(audio) / sample_rate
    times, traj = loudness_trajectory(audio, sample_rate)
    silence, longest = silence_stats(audio, sample_rate)
    flat = spectral_flatness(audio, sample_rate)
    clip = clipping_ratio(audio)
    drop = third_drop(times, traj, duration)
    metrics = {
        "duration_s": duration,
        "integrated_lufs": integrated_loudness(audio, sample_rate),
        "loudness_slope_db_per_s": fit_slope(times, traj),
        "loudness_drop_db": drop,
        "silence_ratio": silence,
        "longest_silence_s": longest,
        "spectral_flatness": flat,
        "clipping_ratio": clip,
        "peak_dbfs": float(20 * np.log10(np.max(np.abs(audio)) + 1e-12)) if len(audio) else None,
    }
    flags = {
        "fades_out": bool(drop > FADE_DROP_DB),
        "noisy": bool(flat is not None and flat > NOISY_FLATNESS),
        "silent": bool(silence > SILENT_RATIO_FLAG),
        "clipping": bool(clip > CLIPPING_RATIO_FLAG),
    }
    return {"metrics": metrics, "flags": flags, "loudness_trajectory": traj, "loudness_times": times}


THRESHOLDS = {
    "fades_out": f"last third > {FADE_DROP_DB:g} dB quieter than the first (short-term loudness, 3 s windows)",
    "noisy": f"mean spectral flatness > {NOISY_FLATNESS:g} (white noise ~0.95, music < 0.3)",
    "silent": f"> {SILENT_RATIO_FLAG:.0%} of 50 ms frames below {SILENCE_DBFS:g} dBFS",
    "clipping": f"> {CLIPPING_RATIO_FLAG:.1%} of samples at full scale",
}
