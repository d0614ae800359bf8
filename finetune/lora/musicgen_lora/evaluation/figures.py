"""Figures of clips: spectrograms and loudness curves for the listening report.

matplotlib with the Agg backend (no display needed); every figure is written to a temp name and
renamed, so a reader never sees half a PNG.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from musicgen_lora.audio.librosa_import import load_librosa
from musicgen_lora.core.outputs import atomic_file


def save_png(fig, path: Path, dpi: int = 80):
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


def _mark_times(ax, boundaries=(), prompt_end=None, onsets=None):
    """Dashed lines where a long clip's windows start (generate.clip_windows), a dotted one where an
    audio prompt ends and the model's continuation begins; a solid red one, labelled, where each
    raised fault starts (onsets: {flag: seconds}, metrics.score_clip's "onsets")."""
    for t in boundaries:
        ax.axvline(t, color="#1a73e8", linestyle="--", linewidth=0.9)
    if prompt_end:
        ax.axvline(prompt_end, color="#188038", linestyle=":", linewidth=1.2)
    for k, (flag, t) in enumerate(sorted((onsets or {}).items(), key=lambda kv: kv[1])):
        ax.axvline(t, color="#d93025", linewidth=1.4)
        ax.text(t, 0.97 - 0.2 * k, f" {flag}", transform=ax.get_xaxis_transform(), color="#ffffff", fontsize=7,
                va="top", ha="left", bbox={"facecolor": "#d93025", "edgecolor": "none", "pad": 1})


def spectrogram_png(audio: np.ndarray, sample_rate: int, path: Path, title: str | None = None,
                    boundaries=(), prompt_end: float | None = None, onsets: dict | None = None):
    """Log-mel spectrogram (dB, 80 dB range) with a time axis in seconds; a (samples, channels) clip
    is drawn from its mid signal (the mean of the channels). boundaries/prompt_end/onsets: _mark_times."""
    librosa = load_librosa()

    audio = np.asarray(audio)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    mel = librosa.feature.melspectrogram(y=audio.astype(np.float32), sr=sample_rate, n_fft=2048, hop_length=512,
                                         n_mels=96, fmax=sample_rate / 2)
    db = librosa.power_to_db(mel, ref=max(float(mel.max()), 1e-10), top_db=80.0)
    fig, ax = plt.subplots(figsize=(6.4, 1.8))
    duration = len(audio) / sample_rate
    image = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0,
                      extent=(0, duration, 0, db.shape[0]))
    bar = fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03)  # what the colours mean
    bar.set_label("dB", fontsize=7, labelpad=1)
    bar.ax.tick_params(labelsize=6)
    # A frequency axis on the mel bins: the bin centres' frequencies, interpolated at round values.
    centres = librosa.mel_frequencies(n_mels=db.shape[0] + 2, fmax=sample_rate / 2)[1:-1]
    ticks = [f for f in (100, 500, 1000, 2000, 4000, 8000, 16000) if centres[0] <= f <= centres[-1]]
    ax.set_yticks(np.interp(ticks, centres, np.arange(len(centres)) + 0.5))
    ax.set_yticklabels([f"{f // 1000}k" if f >= 1000 else str(f) for f in ticks])
    ax.set_ylabel("Hz", fontsize=7, labelpad=1)
    ax.set_xlabel("s", fontsize=7, labelpad=1)
    ax.tick_params(labelsize=7)
    _mark_times(ax, boundaries, prompt_end, onsets)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout(pad=0.3)
    save_png(fig, path)


LINE_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def loudness_plot_png(curves: dict[str, list[float]], path: Path, title: str | None = None, hop_seconds: float = 1.0,
                      boundaries=(), prompt_end: float | None = None):
    """Short-term loudness over time, one line per model (LUFS; silence plotted at the floor);
    boundaries/prompt_end: _mark_times."""
    fig, ax = plt.subplots(figsize=(6.4, 2.0))
    drawn = {}
    for i, (name, values) in enumerate(curves.items()):
        v = np.asarray(values, dtype=float)
        if v.size == 0:
            continue
        t = np.arange(v.size) * hop_seconds + hop_seconds / 2
        # Models often give the same curve (a short clip has 1-3 points): each line its own dash and
        # marker, and a copy says whose it repeats, so no model hides behind another.
        same = next((other for other, w in drawn.items() if w.shape == v.shape and np.array_equal(w, v)), None)
        linestyle, marker = LINE_STYLES[i % len(LINE_STYLES)]
        ax.plot(t, v, marker=marker, markersize=4 if v.size <= 3 else 2.5, linewidth=1.2, linestyle=linestyle,
                label=f"{name} (= {same})" if same else name)
        drawn[name] = v
    finite = [x for v in curves.values() for x in v if np.isfinite(x)]
    if finite:  # at least a 12 dB span, so float noise never looks like a fade
        mid, half = (max(finite) + min(finite)) / 2, max(6.0, (max(finite) - min(finite)) / 2 + 1)
        ax.set_ylim(mid - half, mid + half)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_ylabel("LUFS (short-term)", fontsize=7)
    ax.set_xlabel("s", fontsize=7, labelpad=1)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    _mark_times(ax, boundaries, prompt_end)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout(pad=0.3)
    save_png(fig, path)

