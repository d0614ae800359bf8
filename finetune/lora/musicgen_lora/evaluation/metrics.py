"""Per-clip diagnostics that catch the failures heard in earlier runs: fading out, silence, noise, clipping;
and for stereo clips, output collapsed to mono or with one channel's polarity inverted.

Every threshold is a named constant here, with the reason for its value; tests check each one on
constructed signals (a steady chord with a beat passes; the same chord fading 30 dB over 15 s is
flagged fades_out; white noise is flagged noisy; 8 s of silence shows in the silence ratio).

`score_clip(audio, sample_rate)` -> {"metrics": {...}, "flags": {...}, "loudness_trajectory": [...]}

Audio is (samples,) mono or (samples, channels) as soundfile reads and writes it. Loudness, fade,
silence and flatness are measured on the mid signal (the mean of the channels: what a mono fold-down
plays), so a mono clip and its L = R stereo copy score the same; peaks and clipping on every
channel's samples (one channel can clip while the mid does not). Two-channel clips add the stereo
measures (L/R correlation, side/mid energy) and the stereo flags; mono clips get channels 1, the
stereo measures None and no stereo flags at all.
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

# Stereo (two-channel clips only), measured on the samples of the 50 ms frames where either channel
# is above the silence level (-60 dBFS): digital silence or a fade's tail would only add noise.
# L/R correlation: Pearson over those samples. Side/mid: 10 log10(sum side^2 / sum mid^2), side =
# (L - R) / 2, mid = (L + R) / 2, capped at +-SIDE_MID_LIMIT_DB (identical channels have no side at
# all; R = -L no mid). For channels of equal level the two are one number: corr = (1 - r) / (1 + r)
# with r the side/mid power ratio; correlation also sees a mono source panned off centre (L = g R
# gives corr 1 at any g, side/mid -9.5 dB at g = 0.5), so the flags read the correlation.
# Real stereo music sits at corr ~0.3-0.95 and side/mid ~ -25...-5 dB; decorrelated stereo noise at
# corr ~0, side/mid ~0 dB.
#
# collapsed_to_mono: corr above 0.999 (side/mid below about -33 dB at equal levels, and any side/mid
# below -40 dB implies corr > 0.9998). Even a narrow real mix (reverb, a stereo piano) stays below
# ~0.99; what passes 0.999 is the same signal in both channels -- L = R, a level difference, or the
# quiet decoder noise of two identical code streams. The audio is fine, it is just not stereo: worth
# a note for a stereo model, not a failure of the clip.
COLLAPSED_CORRELATION = 0.999
# phase_inverted: corr below -0.5 (side above mid by more than +4.8 dB at equal levels). Wide
# stereo effects and decorrelated pads bring a whole clip's correlation near 0, rarely below; one
# channel's polarity flipped turns a normal mix's +0.5...+0.95 into -0.5...-0.95, which cancels on a
# mono fold-down (phones, club PAs) and sounds hollow on speakers.
PHASE_INVERTED_CORRELATION = -0.5
SIDE_MID_LIMIT_DB = 100.0

# Melody (clips generated with a reference melody, MusicGen-Melody): chroma_cosine is audiocraft's
# chroma_cosinesim (chroma.chroma_cosine): the mean per-frame cosine of the clip's and the melody's
# max-normalised chromagrams over the frames both cover. 1.0: the same pitch classes frame by frame;
# the melody a tritone away ~0; noise ~0.4 (a flat chroma against a peaked one); clips that follow
# a melody sit above unrelated music. The flag compares with the base model's clip of the same
# prompt and seed, not with an absolute line: how closely a checkpoint follows a melody depends on
# the melody, the prompt and the checkpoint (and a random test model follows none), and the base
# model is what the adapter should keep.
# ignores_melody: an adapter's clip scores more than MELODY_DROP below the base model's -- a fifth of
# the whole scale (1.0 the melody itself, ~0 the melody a tritone away), half of the distance from
# noise (~0.4) to zero; smaller drops are left to the per-model mean, since one clip's score also
# moves with its sampled notes.
MELODY_DROP = 0.2



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


def as_channels(audio) -> np.ndarray:
    """(samples, channels) float32 of a (samples,) or (samples, channels) clip (soundfile's layout)."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        return x[:, None]
    if x.ndim != 2 or (x.shape[1] > x.shape[0] and x.shape[0] <= 8):
        raise ValueError(f"audio of shape {x.shape}: expected (samples,) or (samples, channels)")
    return x


def to_mid(audio) -> np.ndarray:
    """The mid signal, (samples,) float32: the mean of the channels (a mono clip as it is)."""
    x = np.asarray(audio, dtype=np.float32)
    return x if x.ndim == 1 else as_channels(x).mean(axis=1, dtype=np.float32)


def stereo_stats(audio: np.ndarray, sample_rate: int) -> tuple[float | None, float | None]:
    """(L/R Pearson correlation, side/mid energy in dB) of a (samples, 2) clip over the 50 ms frames
    where either channel is above SILENCE_DBFS; None where undefined (silent, or a constant channel)."""
    hop = max(1, int(round(SILENCE_FRAME_S * sample_rate)))
    x = np.asarray(audio, dtype=np.float64)
    frames = len(x) // hop
    if frames == 0:
        keep = x
    else:
        framed = x[:frames * hop].reshape(frames, hop, 2)
        loud = 10 * np.log10(np.mean(framed ** 2, axis=1).max(axis=1) + 1e-20) >= SILENCE_DBFS
        keep = framed[loud].reshape(-1, 2)
    if len(keep) < 2:
        return None, None
    left, right = keep[:, 0], keep[:, 1]
    mid, side = np.sum(((left + right) / 2) ** 2), np.sum(((left - right) / 2) ** 2)
    if mid == 0 and side == 0:
        return None, None
    ratio = 10 * np.log10(side / mid) if mid > 0 and side > 0 else (-np.inf if side == 0 else np.inf)
    side_mid = float(np.clip(ratio, -SIDE_MID_LIMIT_DB, SIDE_MID_LIMIT_DB))
    dl, dr = left - left.mean(), right - right.mean()
    norm = math.sqrt(float(np.sum(dl ** 2)) * float(np.sum(dr ** 2)))
    corr = float(np.clip(np.sum(dl * dr) / norm, -1.0, 1.0)) if norm > 0 else None
    return corr, side_mid


def score_clip(audio: np.ndarray, sample_rate: int) -> dict:
    """All per-clip numbers and flags for one clip, (samples,) mono or (samples, channels)."""
    channels = as_channels(audio)
    audio = to_mid(channels)
    duration = len(audio) / sample_rate
    times, traj = loudness_trajectory(audio, sample_rate)
    silence, longest = silence_stats(audio, sample_rate)
    flat = spectral_flatness(audio, sample_rate)
    clip = clipping_ratio(channels)
    drop = third_drop(times, traj, duration)
    corr, side_mid = stereo_stats(channels, sample_rate) if channels.shape[1] == 2 else (None, None)
    metrics = {
        "duration_s": duration,
        "channels": int(channels.shape[1]),
        "integrated_lufs": integrated_loudness(audio, sample_rate),
        "loudness_slope_db_per_s": fit_slope(times, traj),
        "loudness_drop_db": drop,
        "silence_ratio": silence,
        "longest_silence_s": longest,
        "spectral_flatness": flat,
        "clipping_ratio": clip,
        "peak_dbfs": float(20 * np.log10(np.max(np.abs(channels)) + 1e-12)) if len(audio) else None,
        "lr_correlation": corr,
        "side_mid_db": side_mid,
    }
    flags = {
        "fades_out": bool(drop > FADE_DROP_DB),
        "noisy": bool(flat is not None and flat > NOISY_FLATNESS),
        "silent": bool(silence > SILENT_RATIO_FLAG),
        "clipping": bool(clip > CLIPPING_RATIO_FLAG),
    }
    if channels.shape[1] == 2:  # the stereo flags exist only on stereo clips (flags.FLAGS: stereo=True)
        flags["collapsed_to_mono"] = bool(corr is not None and corr > COLLAPSED_CORRELATION)
        flags["phase_inverted"] = bool(corr is not None and corr < PHASE_INVERTED_CORRELATION)
    return {"metrics": metrics, "flags": flags, "loudness_trajectory": traj, "loudness_times": times}


THRESHOLDS = {
    "fades_out": f"last third > {FADE_DROP_DB:g} dB quieter than the first (short-term loudness, 3 s windows)",
    "noisy": f"mean spectral flatness > {NOISY_FLATNESS:g} (white noise ~0.95, music < 0.3)",
    "silent": f"> {SILENT_RATIO_FLAG:.0%} of 50 ms frames below {SILENCE_DBFS:g} dBFS",
    "clipping": f"> {CLIPPING_RATIO_FLAG:.1%} of samples at full scale",
    "collapsed_to_mono": f"stereo clips: L/R correlation > {COLLAPSED_CORRELATION:g} (the same signal in both "
                         f"channels; side/mid below about -33 dB)",
    "phase_inverted": f"stereo clips: L/R correlation < {PHASE_INVERTED_CORRELATION:g} (one channel's polarity "
                      f"flipped; side above mid by about 5 dB or more)",
    "ignores_melody": f"clips with a reference melody: an adapter's chroma cosine to the melody more than "
                      f"{MELODY_DROP:g} below the base model's clip of the same prompt and seed",
}


def ignores_melody(cosine: float, base_cosine: float) -> bool:
    """An adapter's clip follows the reference melody clearly less than the base model's clip of the
    same prompt and seed (MELODY_DROP)."""
    return bool(cosine < base_cosine - MELODY_DROP)
