"""The clip flags on real rendered music (tests/data/real_music: benchmarks/real_music.py's FluidSynth
renders of music21 corpus scores and a GM drum part, committed): clean pieces raise no fault flag, and
failures that set in late -- the way a fine-tune degrades -- are flagged with the time they start."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_lora.evaluation import metrics

REAL = Path(__file__).resolve().parent / "data" / "real_music"
SR = 32000
PIECES = json.loads((REAL / "pieces.json").read_text(encoding="utf-8"))
FAULTS = ("fades_out", "noisy", "silent", "clipping", "repetitive", "crackle")


def piece(name: str) -> np.ndarray:
    x, sr = sf.read(REAL / PIECES[name]["file"], dtype="float32")
    assert sr == SR
    return x


def late_noise(x, at_s=9.0, level=1.5, under=False, seed=0):
    """White noise from at_s on at `level` x the clip's RMS, replacing the music (or under it)."""
    n = np.random.default_rng(seed).standard_normal(len(x))
    n *= level * np.sqrt(np.mean(x.astype(np.float64) ** 2))
    y = x.astype(np.float64).copy()
    a = int(at_s * SR)
    y[a:] = (y[a:] if under else 0) + n[a:]
    return y.astype(np.float32)


def test_the_set_covers_the_families_at_known_tempo_and_key():
    names = " ".join(PIECES)
    for family in ("piano", "organ", "strings", "guitar", "harpsichord", "drums", "ensemble"):
        assert family in names
    for name, info in PIECES.items():
        x = piece(name)
        assert len(x) == int(info["seconds"] * SR) and 40 <= info["bpm"] <= 200
        assert (info["key"] is None) == name.startswith("drums")
    assert PIECES["piano_k545_rests"]["rests"] and PIECES["drums_kit"]["drums"]


@pytest.mark.parametrize("name", sorted(PIECES))
def test_clean_real_music_raises_no_fault_flag(name):
    scored = metrics.score_clip(piece(name), SR)
    assert not [f for f in FAULTS if scored["flags"][f]], scored["metrics"]
    assert scored["onsets"] == {} and scored["metrics"]["noisy_from_s"] is None


@pytest.mark.parametrize("name", ["organ_bwv66.6", "piano_k545_rests", "drums_kit"])
def test_music_that_collapses_into_noise_late_is_noisy_from_then(name):
    # The miss: 6 s of noise at the end of 15 s kept the clip's mean flatness under 0.5.
    x = late_noise(piece(name), 9.0)
    scored = metrics.score_clip(x, SR)
    assert scored["metrics"]["spectral_flatness"] < metrics.NOISY_FLATNESS  # the whole-clip mean alone misses it
    assert scored["flags"]["noisy"]
    assert scored["onsets"]["noisy"] == pytest.approx(9.0, abs=0.5)
    assert scored["metrics"]["noisy_from_s"] == scored["onsets"]["noisy"]


def test_noise_under_the_music_is_caught_where_it_is_as_loud_as_the_music_not_well_under_it():
    x = piece("strings_k80")
    assert metrics.score_clip(late_noise(x, 9.0, level=1.0, under=True), SR)["flags"]["noisy"]  # SNR 0 dB
    quiet = metrics.score_clip(late_noise(x, 9.0, level=10 ** (-12 / 20), under=True), SR)  # SNR +12 dB: hiss
    assert not quiet["flags"]["noisy"]


def test_a_late_gentle_fade_and_a_short_silent_tail_are_flagged_with_their_onsets():
    x = piece("piano_k545_rests")
    u = np.clip((np.arange(len(x)) / SR - 8.0) / 7.0, 0, 1)
    faded = metrics.score_clip((x * 10 ** (-30 * u ** 2 / 20)).astype(np.float32), SR)  # quadratic from 8 s
    assert faded["flags"]["fades_out"] and faded["metrics"]["loudness_drop_db"] < metrics.FADE_DROP_DB
    assert 8.0 <= faded["onsets"]["fades_out"] <= 13.0  # where it has fallen 10 dB
    tail = piece("organ_bwv66.6").copy()
    tail[12 * SR:] = 0  # the last 3 s: exactly 20% of the clip, which the ratio alone lets pass
    silent = metrics.score_clip(tail, SR)
    assert silent["metrics"]["silence_ratio"] <= metrics.SILENT_RATIO_FLAG + 0.01
    assert silent["flags"]["silent"] and silent["onsets"]["silent"] == pytest.approx(12.0, abs=0.1)


@pytest.mark.slow
def test_score_only_says_when_the_noise_starts(tmp_path):
    from musicgen_lora.evaluation.scoring import score_folder

    clips = tmp_path / "clips"
    (clips / "final_model").mkdir(parents=True)
    sf.write(clips / "final_model" / "organ_noise.wav", late_noise(piece("organ_bwv66.6"), 9.0), SR, subtype="PCM_16")
    sf.write(clips / "final_model" / "organ_clean.wav", piece("organ_bwv66.6"), SR, subtype="PCM_16")
    summary = score_folder(clips, tmp_path / "scored")
    verdict = summary["models"]["final_model"]["verdict"]
    # Onsets sit on the 0.5 s flatness segments' grid (512-sample hops: 8.93 s for noise from 9.0 s).
    assert re.search(r"1/2 noisy from (8\.[5-9]|9\.0) s", verdict) and "0/2 fade out" in verdict, verdict
    rows = [json.loads(line) for line in (tmp_path / "scored" / "comparison_results.jsonl").read_text().splitlines()]
    by_name = {Path(r["wav"]).stem: r for r in rows}
    assert by_name["organ_noise"]["flag_onsets"]["noisy"] == pytest.approx(9.0, abs=0.5)
    assert "flag_onsets" not in by_name["organ_clean"]
    at = by_name["organ_noise"]["flag_onsets"]["noisy"]
    report = (tmp_path / "scored" / "report.html").read_text()
    assert f"noisy from {at:.1f} s" in verdict and f"noisy from {at:.1f} s" in report
    # The spectrogram marks the onset (a red line and label); the clean clip's has no such pixels.
    import matplotlib.image

    def marked(row):
        rgb = matplotlib.image.imread(tmp_path / "scored" / row["spectrogram"])[..., :3] * 255
        return int(np.count_nonzero(np.all(np.abs(rgb - (217, 48, 37)) < 12, axis=-1)))

    assert marked(by_name["organ_noise"]) > 50 and marked(by_name["organ_clean"]) == 0


@pytest.mark.slow
def test_the_real_music_figures_meet_the_goal():
    from benchmarks.flag_figures import measure_real, real_report

    rows = list(measure_real())
    clean = [r for r in rows if r.failure == "clean"]
    assert clean and not [r for r in clean if r.raised]
    late = [r for r in rows if r.clear and r.onset == "late"]
    assert len(late) >= 7 * 5 and sum(r.expect in r.raised for r in late) >= 0.95 * len(late)
    assert any("clear failures, late onset" in line for line in real_report(rows))


def test_late_clipping_and_crackle_are_dated_where_they_start():
    from musicgen_lora.evaluation.signals import with_clicks

    x = piece("ensemble_maple_leaf")
    driven = x.copy()
    driven[9 * SR:] = np.clip(x[9 * SR:] * 4.0, -1.0, 1.0)
    scored = metrics.score_clip(driven, SR)
    assert scored["flags"]["clipping"] and scored["onsets"]["clipping"] == pytest.approx(9.0, abs=0.5)
    times = np.sort(np.random.default_rng(0).uniform(9.05, 14.95, 30))
    scored = metrics.score_clip(with_clicks(x, times, 0.2, SR), SR)
    # 8.5: the rag's own drums make one click-like event at 8.75 s, which the patter right after takes in.
    assert scored["flags"]["crackle"] and 8.5 <= scored["onsets"]["crackle"] <= 10.5
    # One stray click long before the patter is not where the crackle starts.
    scored = metrics.score_clip(with_clicks(x, np.concatenate(([2.0], times)), 0.2, SR), SR)
    assert 8.5 <= scored["onsets"]["crackle"] <= 10.5


def test_a_late_loop_is_dated_where_it_starts():
    from musicgen_lora.evaluation.signals import looped

    scored = metrics.score_clip(looped(piece("organ_bwv66.6"), 9.0, 1.5, SR), SR)
    assert scored["flags"]["repetitive"] and scored["onsets"]["repetitive"] == pytest.approx(9.0, abs=0.5)
    assert metrics.score_clip(piece("organ_bwv66.6"), SR)["metrics"]["repetitive_from_s"] is None
