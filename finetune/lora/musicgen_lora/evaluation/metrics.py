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
# ... and a drop that stays: from some short-term window on, every window is more than FADE_DROP_DB
# under the median of the windows in the clip's first half, for at least FADE_SUSTAIN_S (one whole
# 3 s window). A fade that starts late (quadratic from 8 s) moves the third-averages too little; this
# sees it, and fade_from_s is where the music has fallen those 10 dB (the start of the first such
# window), not where the fade began.
FADE_SUSTAIN_S = 3.0

# Silence: 50 ms frames whose RMS is below -60 dBFS (inaudible at normal listening levels; a
# normalised mix sits around -20 dBFS RMS). `silent` flag: more than 20% of the clip is silent.
SILENCE_FRAME_S = 0.05
SILENCE_DBFS = -60.0
SILENT_RATIO_FLAG = 0.2
# ... or the clip ends in SILENT_TAIL_S or more of silence: the music stopped and did not come back
# (3 s is 20% of a 15 s clip; in a 30 s clip the ratio alone would wait for 6 s). The rendered piano
# with a rest every other bar (tests/data/real_music) has runs of at most ~1 s. silent_from_s: where
# the silence the flag saw starts (the tail's, else the longest run's).
SILENT_TAIL_S = 3.0

# Noise-likeness: spectral flatness (geometric / arithmetic mean of the power spectrum, 50 Hz -
# 15 kHz) of the power spectrum averaged over 0.5 s segments, then averaged over non-silent
# segments. White noise gives ~0.95; tonal music < 0.05; dense drum-heavy mixes stay below ~0.3
# because music's energy falls steeply with frequency. `noisy` above 0.5.
FLATNESS_SEGMENT_S = 0.5
FLATNESS_BAND_HZ = (50.0, 15000.0)
NOISY_FLATNESS = 0.5
# ... and over time: a clip that turns into noise part-way (the way a fine-tune degrades: good for
# 8 s, then hiss) keeps a whole-clip mean under 0.5 (9-15 s of white noise on real music measured
# 0.40). So `noisy` is also raised when every 0.5 s segment of NOISY_SUSTAIN_S in a row is above
# NOISY_WINDOW_FLATNESS, and the clip records when that run starts (noisy_from_s). Measured on the
# rendered real set (tests/data/real_music: piano with rests, organ, string quartet, guitar,
# harpsichord, a dry GM kit with cymbals, a rag ensemble with drums) and the constructed beats and
# drum loops: the highest 2.5 s run minimum of clean music is 0.05 (the GM kit; a lone crash or a hat
# segment reaches 0.6, but never five in a row), tonal music stays under 0.02. White noise mixed
# UNDER the music from 9 s on gives run minima, over the seven pieces, of 0.13-0.30 at +6 dB
# signal-to-noise, 0.21-0.44 at +3 dB, 0.33-0.61 at 0 dB, 0.49-0.76 at -3 dB, and ~0.95 for noise
# alone. The line, 0.25 (5x the highest clean run), sits where the noise is about as loud as the
# music: at 0 dB SNR and below it is caught on every piece, at +3 dB on most (13/14 clips, onsets at
# 3 s and 9 s), at +6 dB on 10/14; hiss further under the music is a noisy recording, which the ear
# still hears as music; "it turned into noise" is the noise level reaching the music's. Shaped (pink)
# noise is less flat than white and is caught where it replaces the music (benchmarks/flag_figures.py
# measures both on the real set).
NOISY_WINDOW_FLATNESS = 0.25
NOISY_SUSTAIN_S = 2.5
# Only segments within NOISY_LEVEL_DB of the clip's median segment level count: a decoder's hiss in a
# near-silent tail (-50 dBFS under music at -20) is flat too, but what the listener hears there is
# the music stopping (fades_out, silent), not noise.
NOISY_LEVEL_DB = 30.0

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

# repetitive: the clip falls into a short loop -- the complaint "good for 8-10 s, then it repeats the
# same bar over and over". What a listener calls stuck is a near-verbatim repeat of the whole texture
# (notes, chords, timbre and rhythm together) at a short lag, lasting; what they call a groove is a
# steady beat whose bars repeat in the drums while the harmony or melody moves, or whose hits differ
# from one to the next as played drums (or a drum machine's noise-based hats) do. So the measure asks,
# frame by frame, whether the fine spectrum equals the one a fixed lag earlier, and counts only frames
# where the music around them is not static:
#   1. Frames every LOOP_HOP_S, each a LOOP_WINDOW_S window: the spectrum in dB, floored LOOP_FLOOR_DB
#      below the frame's loudest bin, its mean level removed (a loop that gets quieter is still a loop).
#   2. The lag: for every lag in LOOP_LAGS_S (one frame apart), the distance (mean |dB difference|,
#      averaged over LOOP_SMOOTH_S) between each second-half frame and the frame one lag earlier, on a
#      coarse copy of the frames (LOOP_MEL_BANDS mel bands: cheap enough for every lag); the lag with
#      the smallest mean distance is the candidate loop length.
#   3. A frame repeats when its fine-spectrum distance at that lag is below LOOP_MATCH_DB (verbatim
#      within what a decoder's noise changes) and the music around it moves: its median coarse distance
#      over all the lags is above LOOP_MOVING_DB. Frames below SILENCE_DBFS never repeat.
#   4. `repetition` = the share of the clip's second half that repeats; flagged above REPETITIVE_SHARE.
# Only the second half is judged: a model that falls into a loop stays in it (the loop fills its own
# context), so a collapse at 7-10 s and a clip that loops from its first second both fill it, while a
# riff played twice early on and then left is music. Lags reach back from the second half only, so a
# loop that starts at 7 s is flagged on its own, whatever the first half held.
# Frames every 20 ms: MusicGen's codec frame (50 per second), so a loop of whole codec frames lines
# up with them exactly; 128 ms windows (bins 7.8 Hz apart at 32 kHz, a semitone above ~130 Hz): a
# changed note or a fresh noise burst shows in its own bins, and a loop whose period falls between two
# frames (up to 10 ms off) still lines up to 8% of the window. An exact repeat measures ~0.2-0.6 dB, the
# same with noise 30 dB under the music ~1.0 dB; played-like drums (fresh noise, timing and velocity
# jitter per hit) 2.3-5 dB, any changed note or chord more.
LOOP_HOP_S = 0.02
LOOP_WINDOW_S = 0.128
LOOP_FLOOR_DB = 40.0    # 40 dB under the loudest part: masked, and where a decoder's noise floor sits
LOOP_MEL_BANDS = 64
# 0.5 s (a beat at 120 bpm) to 4 s (two bars at 120 bpm): the "short loop" of the complaint; a longer
# repeat is a phrase (verse, chorus), which music repeats on purpose.
LOOP_LAGS_S = (0.5, 4.0)
LOOP_CANDIDATES = 4     # lags tested on the fine spectra (step 2 keeps the best few, see repetition())
LOOP_SMOOTH_S = 0.5     # a beat at 120 bpm: one matching frame is not a repeat, half a second is
LOOP_MATCH_DB = 1.5
# A held chord with a kick every half second (make_test_signals' steady/) repeats exactly every beat
# but is static, not stuck: its frames differ from those 0.5-4 s away by ~1-3 dB; music that moves
# (changing notes or chords, a drum pattern) by 7-15 dB.
LOOP_MOVING_DB = 2.0
REPETITIVE_SHARE = 0.5  # more than half of the second half: the listener has heard the loop many times
# Lags reach min(4 s, half the clip), so every second-half frame has its partner in the clip; below
# 4 s (lags up to 2 s) there is too little to tell a loop from a groove: repetition None, no flag.
LOOP_MIN_CLIP_S = 4.0

# crackle: clicks not explained by musical onsets -- "crackling after every attack". A click is a
# spike a few samples wide, so its energy is spread over all frequencies; music's is not above a few
# kHz except in onsets (a stick, a pick, a consonant), which last milliseconds and ring on. So, on the
# signal high-passed at CLICK_HIGHPASS_HZ (4th-order Butterworth), a sample is part of a click when:
#   - it exceeds CLICK_PEAK_RATIO x the high band's RMS over the CLICK_CONTEXT_S before it and over the
#     CLICK_CONTEXT_S after it (the louder of the two), leaving out CLICK_WIDTH_S on either side: a
#     burst longer than that (any drum hit: a beater, a snare, a hat; a hat's onset also has its own
#     noise right after it) carries its energy into the context, a spike does not. Gaussian noise
#     passes 8x its RMS with p ~1e-15 per sample, so hiss is never crackle;
#   - it is within CLICK_LEVEL_DB of the full-band RMS over CLICK_MASK_S around it: quieter
#     discontinuities (a synthesized note cut off at 1% of its level: make_test_signals' kicks, 31 dB
#     down) are masked by the music around them;
#   - it is above SILENCE_DBFS (the filter's own numerical ringing in digital silence is not a click);
#   - it is not a musical onset's own attack: the band below CLICK_HIGHPASS_HZ does not rise by
#     CLICK_ONSET_DB from the CLICK_ONSET_S before it (less CLICK_WIDTH_S) to the CLICK_ONSET_S from
#     CLICK_WIDTH_S before it on. A kick's beater or a stick's tip is a burst of a few ms, as sharp as
#     a click, that starts with the drum's body; a click 5-40 ms after the attack ("crackling after
#     every attack") sits in the body's decay, where the low band falls.
# Samples of one click (closer than CLICK_WIDTH_S) count once; the first and last CLICK_EDGE_S of the
# clip are skipped (the filter's start). `clicks_per_s` is the count over the clip's length on the
# channel with the most; crackle above CRACKLE_CLICKS_PER_S. A click or two in a clip (an edit, a hard
# cut to silence) is not crackle; a patter of them is: 20 clicks in 15 s is 1.3/s, one after every
# kick at 120 bpm 2/s. Clicks that land in a drum's noise are masked for the ear and for this measure
# alike (benchmarks/flag_figures.py finds 20-40% of random clicks on a busy beat), so the limit
# sits low: 0.2/s, 3 clicks in 15 s, where clean material with strong beats measured at most 0.07/s
# (one event in 15 s: a hard cut to silence, or a hat whose first sample stands out).
# Above the fundamentals and the strong harmonics of notes; 70% of a click's energy at 32 kHz.
CLICK_HIGHPASS_HZ = 5000.0
CLICK_PEAK_RATIO = 8.0
CLICK_CONTEXT_S = 0.003
CLICK_WIDTH_S = 0.0005      # a few-sample spike through the filter rings for ~0.3 ms
CLICK_LEVEL_DB = -25.0
CLICK_MASK_S = 0.025        # forward/backward masking spans tens of ms
CLICK_EDGE_S = 0.01
CLICK_ONSET_S = 0.003
CLICK_ONSET_DB = 6.0
CRACKLE_CLICKS_PER_S = 0.2
# crackle_from_s: where three clicks first fall within 3 s (a patter at 1/s; the flag's 0.2/s is 3 in 15 s,
# so a clip flagged for 3 clicks spread wide has no onset, and the verdict says only that it crackles).
CRACKLE_ONSET_S = 3.0



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
    values = [v for v in flatness_segments(audio, sample_rate)[1] if v is not None]
    return float(np.mean(values)) if values else None


def sustained_onset(times, above, seconds: float, step: float) -> float | None:
    """The start time of the first run of consecutive True in `above` (one per `step` s, starting at
    `times`) that lasts `seconds` or more; None if there is none."""
    need = max(1, int(round(seconds / step)))
    run = 0
    for i, a in enumerate(above):
        run = run + 1 if a else 0
        if run >= need:
            return float(times[i - need + 1])
    return None


def noisy_onset(times, values, levels) -> float | None:
    """noisy_from_s: where NOISY_SUSTAIN_S of segments above NOISY_WINDOW_FLATNESS start (silent
    segments, None, and those more than NOISY_LEVEL_DB under the median level break a run)."""
    sounding = [lv for v, lv in zip(values, levels) if v is not None]
    if not sounding:
        return None
    floor = float(np.median(sounding)) - NOISY_LEVEL_DB
    return sustained_onset(times, [v is not None and v > NOISY_WINDOW_FLATNESS and lv >= floor
                                   for v, lv in zip(values, levels)], NOISY_SUSTAIN_S, FLATNESS_SEGMENT_S)


def fade_onset(times, values, duration: float) -> float | None:
    """fade_from_s: the start of the first short-term window from which every window to the end is more
    than FADE_DROP_DB under the median of the first half's windows, lasting FADE_SUSTAIN_S or more."""
    t, v = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    first = v[t <= duration / 2]
    if len(v) < 2 or not first.size:
        return None
    low = v < np.median(first) - FADE_DROP_DB
    if not low[-1]:
        return None
    i = len(low) - 1
    while i > 0 and low[i - 1]:
        i -= 1
    win = min(SHORT_TERM_WINDOW_S, max(duration, 0.4))
    start = t[i] - win / 2
    return float(start) if duration - start >= FADE_SUSTAIN_S else None


def silent_tail_s(audio: np.ndarray, sample_rate: int) -> float:
    """How many seconds at the clip's end are silent (50 ms frames below SILENCE_DBFS)."""
    hop = max(1, int(round(SILENCE_FRAME_S * sample_rate)))
    frames = len(audio) // hop
    if frames == 0:
        return len(audio) / sample_rate
    x = np.asarray(audio[len(audio) - frames * hop:], dtype=np.float64).reshape(frames, hop)
    loud = np.flatnonzero(10 * np.log10(np.mean(x ** 2, axis=1) + 1e-20) >= SILENCE_DBFS)
    return (frames - (loud[-1] + 1 if loud.size else 0)) * hop / sample_rate


def longest_silence_start(audio: np.ndarray, sample_rate: int) -> float | None:
    """Where the longest run of silent 50 ms frames starts (the first of equals); None if no frame is silent."""
    hop = max(1, int(round(SILENCE_FRAME_S * sample_rate)))
    frames = len(audio) // hop
    if frames == 0:
        return 0.0
    x = np.asarray(audio[:frames * hop], dtype=np.float64).reshape(frames, hop)
    silent = 10 * np.log10(np.mean(x ** 2, axis=1) + 1e-20) < SILENCE_DBFS
    best, best_at, run = 0, None, 0
    for i, s in enumerate(silent):
        run = run + 1 if s else 0
        if run > best:
            best, best_at = run, i - run + 1
    return None if best_at is None else best_at * hop / sample_rate


def flatness_segments(audio: np.ndarray, sample_rate: int) -> tuple[list[float], list[float | None], list[float]]:
    """(segment start times, flatness of each FLATNESS_SEGMENT_S segment's averaged power spectrum,
    None for a silent segment; each segment's RMS in dBFS)."""
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
    times, values, levels = [], [], []
    for s in range(0, frames, per_seg):
        seg = x[s * hop: (s + per_seg - 1) * hop + n_fft]
        times.append(s * hop / sample_rate)
        levels.append(float(10 * np.log10(np.mean(seg ** 2) + 1e-20)))
        if levels[-1] < SILENCE_DBFS:
            values.append(None)
            continue
        p = power[s:s + per_seg, band].mean(axis=0) + 1e-20
        values.append(float(np.exp(np.mean(np.log(p))) / np.mean(p)))
    return times, values, levels


def clipping_onset(channels: np.ndarray, sample_rate: int) -> float | None:
    """clipping_from_s: the start of the first FLATNESS_SEGMENT_S segment (any channel) with more than
    CLIPPING_RATIO_FLAG of its samples at full scale -- where the clipping is heard, not a lone peak."""
    seg = max(1, int(round(FLATNESS_SEGMENT_S * sample_rate)))
    full = np.any(np.abs(channels) >= CLIP_LEVEL, axis=1)
    for a in range(0, len(full), seg):
        if full[a:a + seg].mean() > CLIPPING_RATIO_FLAG:
            return a / sample_rate
    return None


def crackle_onset(times) -> float | None:
    """crackle_from_s: the first click followed by two more within CRACKLE_ONSET_S: the patter the
    flag counts, not a lone click (an edit, a hard cut) before it."""
    times = np.asarray(times if times is not None else [])
    for i in range(len(times) - 2):
        if times[i + 2] - times[i] <= CRACKLE_ONSET_S:
            return float(times[i])
    return None


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


def _mel_bank(sample_rate: int, n_fft: int, bands: int) -> np.ndarray:
    """(bands, n_fft // 2 + 1) triangular mel filters from 30 Hz to min(16 kHz, Nyquist)."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    edges = 700.0 * (10 ** (np.linspace(mel(30.0), mel(min(16000.0, sample_rate / 2)), bands + 2) / 2595.0) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None).astype(np.float32)


def _shape_db(power: np.ndarray) -> np.ndarray:
    """Rows of power in dB relative to each row's loudest value, floored at -LOOP_FLOOR_DB, float32."""
    db = 10 * np.log10(power + 1e-20)
    return np.maximum(db - db.max(axis=1, keepdims=True), -LOOP_FLOOR_DB).astype(np.float32)


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean |dB difference| of rows of a and b over the bins either one has above the floor: a few
    partials that change count fully, however many bins lie silent under the floor."""
    active = np.count_nonzero((a > -LOOP_FLOOR_DB) | (b > -LOOP_FLOOR_DB), axis=1)
    return np.sum(np.abs(a - b), axis=1) / np.maximum(active, 1)


def loop_frames(audio: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frames the loop measure compares, one every LOOP_HOP_S (LOOP_WINDOW_S Hann windows):
    (fine (frames, n_fft // 2 + 1) and coarse (frames, LOOP_MEL_BANDS) spectra in dB, floored and
    level-free (_shape_db), float32; each frame's RMS in dBFS). Computed a block of frames at a time,
    so a long clip never holds all its windows at once."""
    from scipy.fft import rfft  # scipy: loaded when a clip is scored; its float32 FFT is 4x numpy's here

    hop = max(1, int(round(LOOP_HOP_S * sample_rate)))
    n_fft = 1 << int(round(math.log2(LOOP_WINDOW_S * sample_rate)))
    x = np.asarray(audio, dtype=np.float32)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = 1 + (len(x) - n_fft) // hop
    windows = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # a view: (frames, n_fft)
    cum = np.concatenate(([0.0], np.cumsum(np.square(x, dtype=np.float64))))
    starts = hop * np.arange(frames)
    level = 10 * np.log10((cum[starts + n_fft] - cum[starts]) / n_fft + 1e-20)
    taper, bank = np.hanning(n_fft).astype(np.float32), _mel_bank(sample_rate, n_fft, LOOP_MEL_BANDS)
    fine = np.empty((frames, n_fft // 2 + 1), dtype=np.float32)
    coarse = np.empty((frames, LOOP_MEL_BANDS), dtype=np.float32)
    for a in range(0, frames, 256):
        spectrum = rfft(windows[a:a + 256] * taper, axis=1)
        power = spectrum.real ** 2 + spectrum.imag ** 2
        fine[a:a + len(power)] = _shape_db(power)
        coarse[a:a + len(power)] = _shape_db(power @ bank.T)
    return fine, coarse, level


def repetition(audio: np.ndarray, sample_rate: int) -> tuple[float | None, float | None]:
    """(share of the clip's second half that repeats, near-verbatim, the material one lag earlier; that
    lag in seconds), the `repetitive` measure (see LOOP_* above); (None, None) under LOOP_MIN_CLIP_S."""
    return repetition_detail(audio, sample_rate)[:2]


def repetition_detail(audio: np.ndarray, sample_rate: int) -> tuple[float | None, float | None, float | None]:
    """repetition's (share, lag) and repetitive_from_s: where the loop is first heard -- the first
    LOOP_SMOOTH_S of repeating second-half frames, less one lag (the material they repeat). The measure
    looks at the second half only, so a loop that began earlier reads as starting one lag before the
    middle: "from" is then "at the latest"."""
    from scipy.ndimage import uniform_filter1d  # scipy: loaded when a clip is scored, not when this module is

    if len(audio) < LOOP_MIN_CLIP_S * sample_rate:
        return None, None, None
    fine, coarse, level = loop_frames(audio, sample_rate)
    frames, hop_s = len(fine), max(1, int(round(LOOP_HOP_S * sample_rate))) / sample_rate
    half = frames // 2
    lags = np.arange(int(round(LOOP_LAGS_S[0] / hop_s)), min(int(round(LOOP_LAGS_S[1] / hop_s)), half) + 1)
    smooth = max(1, int(round(LOOP_SMOOTH_S / hop_s)))
    # Coarse distance of every second-half frame to the frame one lag earlier, for every lag: (lags, frames).
    late = coarse[half:]
    dist = np.stack([np.mean(np.abs(late - coarse[half - lag:frames - lag]), axis=1) for lag in lags])
    dist = uniform_filter1d(dist, smooth, axis=1, mode="nearest")
    sounding = level[half:] >= SILENCE_DBFS
    moving = np.median(dist, axis=0) > LOOP_MOVING_DB
    # The candidate lags: the LOOP_CANDIDATES whose coarse copies match (within LOOP_MATCH_DB) on the
    # most sounding frames, the closest on average first among equals. A loop that fills only part of
    # the half matches there exactly, while a drum groove's bar is closer on average over all of it;
    # the fine test then picks among them.
    if sounding.any():
        near = dist[:, sounding]
        order = np.lexsort((near.mean(axis=1), -(near < LOOP_MATCH_DB).mean(axis=1)))
    else:
        order = np.arange(len(lags))
    best, masks = (-1.0, -int(lags[0])), {}
    for lag in lags[order[:LOOP_CANDIDATES]]:
        same = _distance(fine[half:], fine[half - lag:frames - lag])
        same = uniform_filter1d(same, smooth, mode="nearest")
        masks[int(lag)] = (same < LOOP_MATCH_DB) & moving & sounding
        share = float(masks[int(lag)].mean())
        best = max(best, (share, -int(lag)))  # equal shares: the shorter lag (a loop also repeats at 2x its period)
    lag = -best[1]
    first = sustained_onset(np.arange(frames - half), masks.get(lag, []), smooth, 1)
    onset = None if first is None else max(0.0, (half + first - lag) * hop_s)
    return best[0], lag * hop_s, onset


def clicks_per_second(audio: np.ndarray, sample_rate: int) -> float | None:
    """Clicks per second in one channel, (samples,): the `crackle` measure (see CLICK_* above); None
    when the rate leaves no room above CLICK_HIGHPASS_HZ."""
    times = click_times(audio, sample_rate)
    return None if times is None else (len(times) / (len(audio) / sample_rate) if len(audio) else 0.0)


def click_times(audio: np.ndarray, sample_rate: int) -> np.ndarray | None:
    """The times (s) of the clicks clicks_per_second counts, one per click; None as there."""
    from scipy.signal import butter, sosfilt  # scipy: loaded when a clip is scored, not when this module is

    if sample_rate / 2 <= CLICK_HIGHPASS_HZ * 1.2:
        return None
    x = np.asarray(audio, dtype=np.float64)
    n = len(x)
    high = sosfilt(butter(4, CLICK_HIGHPASS_HZ, btype="highpass", fs=sample_rate, output="sos"), x)
    low = sosfilt(butter(4, CLICK_HIGHPASS_HZ, btype="lowpass", fs=sample_rate, output="sos"), x)
    mag = np.abs(high)
    width, context, mask, onset = (max(1, int(round(s * sample_rate)))
                                   for s in (CLICK_WIDTH_S, CLICK_CONTEXT_S, CLICK_MASK_S, CLICK_ONSET_S))
    edge = max(int(round(CLICK_EDGE_S * sample_rate)), width + max(context, onset))
    # Only samples above the silence level can be clicks: their contexts are all that is measured.
    at = np.flatnonzero(mag[edge:n - edge] > 10 ** (SILENCE_DBFS / 20)) + edge
    cum_high = np.concatenate(([0.0], np.cumsum(high * high)))
    cum_full = np.concatenate(([0.0], np.cumsum(x * x)))
    cum_low = np.concatenate(([0.0], np.cumsum(low * low)))

    def mean_square(cum, lo, hi):
        lo, hi = np.clip(lo, 0, n), np.clip(hi, 0, n)
        return (cum[hi] - cum[lo]) / np.maximum(hi - lo, 1)

    before = mean_square(cum_high, at - width - context, at - width)
    after = mean_square(cum_high, at + width + 1, at + width + 1 + context)
    around = mean_square(cum_full, at - mask, at + mask + 1)
    peak = mag[at] ** 2
    rise = mean_square(cum_low, at - width, at - width + onset) / \
        np.maximum(mean_square(cum_low, at - width - onset, at - width), 1e-20)
    hits = at[(peak > CLICK_PEAK_RATIO ** 2 * np.maximum(before, after)) & (peak > around * 10 ** (CLICK_LEVEL_DB / 10))
              & (rise < 10 ** (CLICK_ONSET_DB / 10))]
    if hits.size == 0:
        return np.zeros(0)
    first = np.concatenate(([True], np.diff(hits) > width))  # samples of one click count once
    return hits[first] / sample_rate


def score_clip(audio: np.ndarray, sample_rate: int) -> dict:
    """All per-clip numbers and flags for one clip, (samples,) mono or (samples, channels)."""
    channels = as_channels(audio)
    audio = to_mid(channels)
    duration = len(audio) / sample_rate
    times, traj = loudness_trajectory(audio, sample_rate)
    silence, longest = silence_stats(audio, sample_rate)
    seg_times, seg_flat, seg_levels = flatness_segments(audio, sample_rate)
    flat_values = [v for v in seg_flat if v is not None]
    flat = float(np.mean(flat_values)) if flat_values else None
    noisy_from = noisy_onset(seg_times, seg_flat, seg_levels)
    fade_from = fade_onset(times, traj, duration)
    tail = silent_tail_s(audio, sample_rate)
    clip = clipping_ratio(channels)
    drop = third_drop(times, traj, duration)
    corr, side_mid = stereo_stats(channels, sample_rate) if channels.shape[1] == 2 else (None, None)
    repeat, repeat_lag, repeat_from = repetition_detail(audio, sample_rate)
    # A click in one channel is heard on headphones: every channel is searched, the one with most counts.
    found = [t for t in (click_times(channels[:, c], sample_rate) for c in range(channels.shape[1])) if t is not None]
    most = max(found, key=len) if found else None
    clicks = (len(most) / duration if duration else 0.0) if most is not None else None
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
        "repetition": repeat,
        "repetition_lag_s": repeat_lag,
        "clicks_per_s": clicks,
        "silent_tail_s": tail,
    }
    flags = {
        "fades_out": bool(drop > FADE_DROP_DB or fade_from is not None),
        "noisy": bool(flat is not None and flat > NOISY_FLATNESS or noisy_from is not None),
        "silent": bool(silence > SILENT_RATIO_FLAG or tail >= SILENT_TAIL_S),
        "clipping": bool(clip > CLIPPING_RATIO_FLAG),
        "repetitive": bool(repeat is not None and repeat > REPETITIVE_SHARE),
        "crackle": bool(clicks is not None and clicks > CRACKLE_CLICKS_PER_S),
    }
    if channels.shape[1] == 2:  # the stereo flags exist only on stereo clips (flags.FLAGS: stereo=True)
        flags["collapsed_to_mono"] = bool(corr is not None and corr > COLLAPSED_CORRELATION)
        flags["phase_inverted"] = bool(corr is not None and corr < PHASE_INVERTED_CORRELATION)
    # When each raised fault starts (seconds into the clip), for the sidecar, the report and the
    # verdict: "noisy from 9.0 s". A flag raised by its whole-clip rule alone gets the onset of what
    # its windowed rule saw (0.0 for noise from the start), or none.
    silent_from = (duration - tail if tail >= SILENT_TAIL_S else longest_silence_start(audio, sample_rate))
    onsets = {"noisy": noisy_from, "fades_out": fade_from, "silent": silent_from,
              "clipping": clipping_onset(channels, sample_rate), "crackle": crackle_onset(most),
              "repetitive": repeat_from}
    metrics.update({f"{name}_from_s": onsets[name] if flags[name] else None for name in onsets})
    return {"metrics": metrics, "flags": flags, "loudness_trajectory": traj, "loudness_times": times,
            "onsets": {name: t for name, t in onsets.items() if flags[name] and t is not None}}


THRESHOLDS = {
    "fades_out": f"last third > {FADE_DROP_DB:g} dB quieter than the first (short-term loudness, 3 s windows), "
                 f"or the loudness stays > {FADE_DROP_DB:g} dB under the first half's median for the last "
                 f"{FADE_SUSTAIN_S:g} s or more",
    "noisy": f"mean spectral flatness > {NOISY_FLATNESS:g} (white noise ~0.95, music < 0.3), or every 0.5 s "
             f"segment of {NOISY_SUSTAIN_S:g} s in a row above {NOISY_WINDOW_FLATNESS:g} (noise about as loud "
             f"as the music, or louder, from some time on)",
    "silent": f"> {SILENT_RATIO_FLAG:.0%} of 50 ms frames below {SILENCE_DBFS:g} dBFS, or the last "
              f"{SILENT_TAIL_S:g} s or more",
    "clipping": f"> {CLIPPING_RATIO_FLAG:.1%} of samples at full scale",
    "repetitive": f"> {REPETITIVE_SHARE:.0%} of the clip's second half repeats the material one lag of "
                  f"{LOOP_LAGS_S[0]:g}-{LOOP_LAGS_S[1]:g} s earlier near-verbatim (fine spectra within "
                  f"{LOOP_MATCH_DB:g} dB) where the music moves; clips under {LOOP_MIN_CLIP_S:g} s are not judged",
    "crackle": f"> {CRACKLE_CLICKS_PER_S:g} clicks/s: spikes above {CLICK_HIGHPASS_HZ / 1000:g} kHz over "
               f"{CLICK_PEAK_RATIO:g}x the high band's RMS in the {CLICK_CONTEXT_S * 1000:g} ms on either side "
               f"and within {-CLICK_LEVEL_DB:g} dB of the music around them",
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
