"""Objective evaluation: every flag and threshold on constructed signals, FAD, held-out loss, --score_only."""
import json
import re

import numpy as np
import pytest
import soundfile as sf

import musicgen_lora.evaluation.metrics as am
from musicgen_lora.evaluation.flags import FLAG_NAMES, MELODY_FLAG_NAMES, STEREO_FLAG_NAMES
from musicgen_lora.evaluation.signals import (
    after_attacks,
    chord_with_beat,
    clipped,
    drum_loop,
    fade,
    invert_right,
    looped,
    random_times,
    silent_tail,
    stereo_chord,
    to_stereo,
    varied_beat,
    white_noise,
    with_clicks,
)
from musicgen_lora.evaluation.style_distance import frechet_distance

from browser import chromium_session, find_chromium
from conftest import run_script

SR = 32000


def test_steady_chord_with_beat_passes():
    r = am.score_clip(chord_with_beat(), SR)
    assert r["flags"] == {"fades_out": False, "noisy": False, "silent": False, "clipping": False,
                          "repetitive": False, "crackle": False}
    m = r["metrics"]
    assert abs(m["loudness_drop_db"]) < 1 and abs(m["loudness_slope_db_per_s"]) < 0.1
    assert m["silence_ratio"] == 0 and m["spectral_flatness"] < 0.05 and m["clipping_ratio"] == 0
    assert -30 < m["integrated_lufs"] < -10
    assert len(r["loudness_trajectory"]) == 13  # 3 s windows every second over 15 s


def test_fading_30_db_is_flagged_and_the_threshold_holds():
    m = am.score_clip(fade(chord_with_beat(), 30), SR)
    assert m["flags"]["fades_out"] and not m["flags"]["silent"]
    assert m["metrics"]["loudness_drop_db"] > am.FADE_DROP_DB
    assert m["metrics"]["loudness_slope_db_per_s"] == pytest.approx(-2.0, abs=0.2)  # 30 dB / 15 s
    # A gentle 10 dB fade over 15 s (third-to-third drop ~6.7 dB) is dynamics, not a fade-out.
    gentle = am.score_clip(fade(chord_with_beat(), 10), SR)
    assert not gentle["flags"]["fades_out"] and 4 < gentle["metrics"]["loudness_drop_db"] < am.FADE_DROP_DB


def test_white_noise_is_noisy_music_is_not():
    noise = white_noise()
    r = am.score_clip(noise, SR)
    assert r["flags"]["noisy"] and r["metrics"]["spectral_flatness"] > 0.9
    mixed = chord_with_beat() + noise * 0.05  # music with a little hiss stays music
    assert not am.score_clip(mixed, SR)["flags"]["noisy"]


def test_eight_seconds_of_silence_show():
    r = am.score_clip(silent_tail(chord_with_beat(), 8.0), SR)  # the last 8 s silent
    assert r["metrics"]["silence_ratio"] == pytest.approx(8 / 15, abs=0.01)
    assert r["metrics"]["longest_silence_s"] == pytest.approx(8.0, abs=0.06)
    assert r["flags"]["silent"]
    assert r["metrics"]["integrated_lufs"] > -40  # gated loudness ignores the silence, as BS.1770 does
    # A 1 s pause (7% of the clip) is below the flag.
    y = chord_with_beat()
    y[SR * 5:SR * 6] = 0
    assert not am.score_clip(y, SR)["flags"]["silent"]


def test_clipping():
    r = am.score_clip(clipped(chord_with_beat()), SR)
    assert r["flags"]["clipping"] and r["metrics"]["clipping_ratio"] > am.CLIPPING_RATIO_FLAG
    assert not am.score_clip(chord_with_beat(), SR)["flags"]["clipping"]


# --- stereo: the mid signal, the stereo measures and their two flags -----------------------------------

MONO_FLAGS = {"fades_out", "noisy", "silent", "clipping", "repetitive", "crackle"}
# A stereo clip carries every flag but the melody ones (only adapter clips generated with a melody do).
STEREO_CLIP_FLAGS = set(FLAG_NAMES) - set(MELODY_FLAG_NAMES)
# Every constructed clip and the flags it raises, exactly: each stereo flag on its own signal only,
# never on a mono clip (whose flags have no stereo keys at all).
CASES = {
    "steady": (chord_with_beat, set()),
    "fading": (lambda: fade(chord_with_beat(), 30), {"fades_out"}),
    "noise": (white_noise, {"noisy"}),
    "clipped": (lambda: clipped(chord_with_beat()), {"clipping"}),
    # The two failure modes users report, each with the clean material it must not be confused with:
    # music that moves over a steady beat (its drum bars repeat), and played drums alone.
    "varied_beat": (lambda: varied_beat(bpm=100, seed=1), set()),
    "drum_loop": (lambda: drum_loop(bpm=120, seed=2), set()),
    "loop_after_7s": (lambda: looped(varied_beat(bpm=100, seed=1), 7.0, 1.2), {"repetitive"}),
    "bar_loop": (lambda: looped(varied_beat(bpm=120, key=3, seed=3), 0.0, 2.0), {"repetitive"}),
    "random_clicks": (lambda: with_clicks(chord_with_beat(), random_times(60, 15.0, seed=1)), {"crackle"}),
    "clicks_after_attacks": (lambda: with_clicks(drum_loop(bpm=120, seed=2),
                                                 after_attacks(np.arange(0, 15, 0.5), 15.0, seed=2)), {"crackle"}),
    "stereo": (stereo_chord, set()),
    "stereo_noise": (lambda: np.stack([white_noise(seed=1), white_noise(seed=2)], axis=1), {"noisy"}),
    "collapsed": (lambda: to_stereo(chord_with_beat()), {"collapsed_to_mono"}),
    "panned_mono": (lambda: np.stack([chord_with_beat(), 0.5 * chord_with_beat()], axis=1), {"collapsed_to_mono"}),
    "phase_inverted": (lambda: invert_right(stereo_chord()), {"phase_inverted"}),
    # R = -L: the mid cancels, so the mono fold-down is silent too (as it is on a mono speaker).
    "left_minus_left": (lambda: invert_right(to_stereo(chord_with_beat())), {"phase_inverted", "silent"}),
}


@pytest.fixture(scope="module")
def scored_cases():
    return {name: am.score_clip(make(), SR) for name, (make, _) in CASES.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_each_flag_fires_exactly_on_its_signal(scored_cases, case):
    r = scored_cases[case]
    raised = {f for f, on in r["flags"].items() if on}
    assert raised == CASES[case][1], (case, r["metrics"])
    stereo = r["metrics"]["channels"] == 2
    assert set(r["flags"]) == (STEREO_CLIP_FLAGS if stereo else MONO_FLAGS)
    assert (r["metrics"]["lr_correlation"] is None) == (not stereo)


@pytest.mark.slow
def test_repetition_and_clicks_measure_what_they_say(scored_cases):
    m = {case: scored_cases[case]["metrics"] for case in CASES}
    # The loop from 7 s is heard again from 8.2 s: 6.8 s of the 7.5 s second half (0.91, less the
    # half-second smoothing at its start); its lag is its period.
    assert 0.8 < m["loop_after_7s"]["repetition"] <= 0.91
    assert m["loop_after_7s"]["repetition_lag_s"] == pytest.approx(1.2, abs=0.03)
    assert m["bar_loop"]["repetition_lag_s"] == pytest.approx(2.0, abs=0.03)
    for clean in ("varied_beat", "drum_loop", "steady"):  # bars repeat; the music, or the playing, does not
        assert m[clean]["repetition"] < am.REPETITIVE_SHARE / 2, (clean, m[clean]["repetition"])
        assert m[clean]["clicks_per_s"] < am.CRACKLE_CLICKS_PER_S / 2, (clean, m[clean]["clicks_per_s"])
    # 60 clicks in 15 s: 4/s, most of them found (a few fall under a kick's masking).
    assert 3.0 < m["random_clicks"]["clicks_per_s"] <= 4.0
    # Below LOOP_MIN_CLIP_S there is too little to tell a loop from a groove: not judged.
    short = am.score_clip(looped(varied_beat(3.0, bpm=120, seed=3), 0.0, 0.5), SR)
    assert short["metrics"]["repetition"] is None and not short["flags"]["repetitive"]


@pytest.mark.slow
def test_every_flag_family_of_the_figures_raises_exactly_its_flags():
    """One clip of every family of finetune/scripts/flag_figures.py (the README's detection and
    false-positive figures): clean material with strong beats raises nothing, each failure its own flag."""
    from benchmarks.flag_figures import measure

    rows = list(measure(1, 15.0, seed=0))
    false = [(r.family, r.words, sorted(r.raised)) for r in rows if r.raised - r.expect]
    assert not false  # never a flag on clean material, nor a new flag on an old failure
    missed = [(r.family, r.words, r.scores) for r in rows if r.expect - r.raised]
    # Clicks that land in a drum's noise are masked (see metrics.py): the quietest family misses some.
    # The figures' run (8 per family) finds 46/48; one miss here is the most that is allowed.
    assert len(missed) <= 1 and all(f.startswith("clicks after every beat") for f, *_ in missed), missed


@pytest.mark.slow
@pytest.mark.parametrize("flag", STEREO_FLAG_NAMES)
def test_stereo_flags_never_fire_on_mono_clips(scored_cases, flag):
    fired = {case for case, r in scored_cases.items() if r["flags"].get(flag)}
    assert fired == {case for case, (_, expected) in CASES.items() if flag in expected}
    assert all(flag not in r["flags"] for r in scored_cases.values() if r["metrics"]["channels"] == 1)


@pytest.mark.slow
def test_stereo_measures_of_the_constructed_clips(scored_cases):
    m = {case: scored_cases[case]["metrics"] for case in ("steady", "stereo", "collapsed", "phase_inverted",
                                                          "stereo_noise", "left_minus_left")}
    assert m["steady"]["channels"] == 1 and m["steady"]["lr_correlation"] is None and m["steady"]["side_mid_db"] is None
    assert all(m[c]["channels"] == 2 for c in m if c != "steady")
    assert m["stereo"]["lr_correlation"] == pytest.approx(0.66, abs=0.03)
    assert m["stereo"]["side_mid_db"] == pytest.approx(-6.9, abs=0.5)
    assert m["collapsed"]["lr_correlation"] == pytest.approx(1.0)
    assert m["collapsed"]["side_mid_db"] == -am.SIDE_MID_LIMIT_DB  # no side at all
    # Flipping R swaps mid and side: the same numbers with the sign changed.
    assert m["phase_inverted"]["lr_correlation"] == pytest.approx(-m["stereo"]["lr_correlation"], abs=1e-6)
    assert m["phase_inverted"]["side_mid_db"] == pytest.approx(-m["stereo"]["side_mid_db"], abs=1e-4)
    assert abs(m["stereo_noise"]["lr_correlation"]) < 0.05 and abs(m["stereo_noise"]["side_mid_db"]) < 0.5
    assert m["left_minus_left"]["lr_correlation"] == pytest.approx(-1.0)
    assert m["left_minus_left"]["side_mid_db"] == am.SIDE_MID_LIMIT_DB
    # The stereo clip's mid is the mono chord: the mid-signal numbers agree with the mono clip's.
    for key in ("integrated_lufs", "loudness_drop_db", "silence_ratio", "spectral_flatness"):
        assert m["stereo"][key] == pytest.approx(m["steady"][key], abs=1e-3), key


def test_mono_clip_and_its_left_equals_right_copy_score_the_same():
    mono = chord_with_beat()
    a, b = am.score_clip(mono, SR), am.score_clip(to_stereo(mono), SR)
    stereo_keys = {"channels", "lr_correlation", "side_mid_db"}
    assert {k: v for k, v in a["metrics"].items() if k not in stereo_keys} == \
           {k: v for k, v in b["metrics"].items() if k not in stereo_keys}
    assert a["loudness_trajectory"] == b["loudness_trajectory"] and a["loudness_times"] == b["loudness_times"]
    assert {f: b["flags"][f] for f in MONO_FLAGS} == a["flags"]
    # (samples, 1) is mono, the same as (samples,); (channels, samples) is refused, not misread.
    assert am.score_clip(mono[:, None], SR) == a
    with pytest.raises(ValueError, match="samples, channels"):
        am.score_clip(to_stereo(mono).T, SR)
    # The same holds for a failing clip: a fade scores the same in mono and as L = R.
    faded = fade(mono, 30)
    assert am.score_clip(faded, SR)["metrics"]["loudness_drop_db"] == \
           am.score_clip(to_stereo(faded), SR)["metrics"]["loudness_drop_db"]


def _with_side_mid(x, db):
    """x (samples, 2) with its side rescaled so side/mid energy is `db`, peaks kept below full scale."""
    mid, side = (x[:, 0] + x[:, 1]) / 2, (x[:, 0] - x[:, 1]) / 2
    side = side * np.sqrt(10 ** (db / 10) * np.sum(mid ** 2) / np.sum(side ** 2))
    y = np.stack([mid + side, mid - side], axis=1)
    return (y / max(1.0, np.abs(y).max() / 0.9)).astype(np.float32)


@pytest.mark.parametrize("db,flag", [(-50, "collapsed_to_mono"), (-36, "collapsed_to_mono"), (-30, None),
                                     (-15, None), (0, None), (3, None), (6, "phase_inverted"),
                                     (15, "phase_inverted")])
def test_stereo_thresholds_on_the_side_mid_scale(db, flag):
    """Equal-level channels: corr = (1 - r) / (1 + r). Collapsed below about -33 dB (corr 0.999), a
    narrow real mix (-30...-15 dB) is stereo; side above mid by ~5 dB (corr -0.5) is phase inverted."""
    r = am.score_clip(_with_side_mid(stereo_chord(), db), SR)
    ratio = 10 ** (db / 10)
    assert r["metrics"]["side_mid_db"] == pytest.approx(db, abs=0.1)
    assert r["metrics"]["lr_correlation"] == pytest.approx((1 - ratio) / (1 + ratio), abs=0.01)
    assert {f for f, on in r["flags"].items() if on} == ({flag} if flag else set())


def test_fad_is_zero_on_itself_and_grows_with_noise(tiny_model_dir):
    from musicgen_lora.evaluation.style_distance import encodec_embeddings
    from musicgen_lora.model.checkpoint import load_model_and_processor

    model, _ = load_model_and_processor(str(tiny_model_dir))
    clips = [chord_with_beat(3.0) * g for g in (0.5, 0.8, 1.0, 1.2)]
    ref = encodec_embeddings(model, clips)
    assert frechet_distance(ref, ref) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(1)
    fads = []
    for level in (0.02, 0.1, 0.3):
        noisy = [(c + rng.standard_normal(len(c)).astype(np.float32) * level) for c in clips]
        fads.append(frechet_distance(encodec_embeddings(model, noisy), ref))
    assert 0 < fads[0] < fads[1] < fads[2], fads


def test_base_held_out_loss_equals_the_trainers_step_0(tiny_model_dir, trained_run, example_data_dir, tmp_path):
    """Same label function, same validation clips and window: evaluate.py reproduces train_lora.py."""
    run, output = trained_run
    from musicgen_lora.evaluation.compare import ModelBank, ModelSpec, held_out_losses, validation_loader
    from musicgen_lora.model.checkpoint import load_model_and_processor

    summary = json.loads((run / "logs" / "summary.json").read_text())
    model, processor = load_model_and_processor(str(tiny_model_dir))
    specs = [ModelSpec("base_model", None), ModelSpec("best_model", run / "best_model")]
    bank = ModelBank(model, specs)
    loader, _ = validation_loader(processor, model, example_data_dir, "metadata.json", 6.0, 4)
    res = held_out_losses(bank, specs, loader, progress=False)
    assert res["base_model"]["held_out_loss"] == pytest.approx(summary["base_valid_loss"], abs=1e-4)
    assert f"step 0: base validation loss {summary['base_valid_loss']:.4f}" in output
    assert res["best_model"]["held_out_loss"] == pytest.approx(summary["best_valid_loss"], abs=1e-4)
    assert len(res["base_model"]["held_out_loss_per_codebook"]) == 4
    assert res["base_model"]["uniform_loss"] == pytest.approx(np.log(64))


def test_compare_multi_summary_schema_and_verdicts(tiny_model_dir, trained_run, example_data_dir, tmp_path):
    run, _ = trained_run
    out = tmp_path / "eval"
    proc = run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--lora_model_path", run, "--compare_multi",
                      "--test_prompts", "dark trap 808", "lofi piano", "--duration", 1.5, "--data_dir",
                      example_data_dir, "--output_dir", out, "--no_progress")
    summary = json.loads((out / "summary.json").read_text())
    lines = [line for line in proc.stdout.splitlines() if line.split(":")[0] in summary["models"]]
    assert [line.split(":")[0] for line in lines] == ["base_model", "best_model", "final_model"]
    train_summary = json.loads((run / "logs" / "summary.json").read_text())
    for name, m in summary["models"].items():
        assert m["num_clips"] == 2 and set(m["flag_counts"]) == MONO_FLAGS
        assert all(isinstance(v, int) for v in m["flag_counts"].values())
        assert isinstance(m["held_out_loss"], float) and isinstance(m["fad"], float) and m["fad"] >= 0
        assert m["verdict"].startswith(f"{name}: ") and "held-out loss" in m["verdict"]
        assert m["verdict"] in lines
        for key in ("integrated_lufs", "loudness_drop_db", "silence_ratio", "spectral_flatness", "clipping_ratio"):
            assert isinstance(m[key], float), key
    assert summary["models"]["base_model"]["held_out_loss"] == pytest.approx(train_summary["base_valid_loss"], abs=1e-4)
    rows = [json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert set(r["flags"]) == MONO_FLAGS
        assert r["metrics"]["duration_s"] == pytest.approx(1.5)
        assert len(r["loudness_trajectory"]) >= 1
    assert len(list((out / "plots").glob("*_loudness.png"))) == 2
    html = (out / "report.html").read_text()
    assert 'id="models"' in html and "held-out loss" in html
    assert any("CLAP similarity skipped" in note for note in summary["notes"])


@pytest.mark.slow
def test_score_only_constructed_signals_with_a_corrupt_file(tmp_path):
    """make_test_signals.py's known answers through --score_only: each case flagged, the rest clean."""
    clips, out = tmp_path / "clips", tmp_path / "scored"
    run_script("make_test_signals.py", "--output_dir", clips, "--corrupt")
    proc = run_script("evaluate.py", "--score_only", "--input_dir", clips, "--output_dir", out)
    assert "99_corrupt.wav" in proc.stderr and "unreadable" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    expected = {"steady": None, "fading": "fades_out", "noise": "noisy", "silent_tail": "silent",
                "clipped": "clipping", "varied_beat": None, "drum_loop": None, "repetitive": "repetitive",
                "crackle": "crackle"}
    assert set(summary["models"]) == set(expected)
    for name, flag in expected.items():
        m = summary["models"][name]
        assert m["num_clips"] == 2, name
        if flag:
            assert m["flag_counts"][flag] == 2, (name, m["flag_counts"])
        assert m["held_out_loss"] is None and m["fad"] is None
    clean = {"fades_out": 0, "noisy": 0, "silent": 0, "clipping": 0, "repetitive": 0, "crackle": 0}
    assert summary["models"]["steady"]["flag_counts"] == clean
    # Each failure is caught by its own flag, not by all of them (a stopped clip also reads as a fade).
    assert summary["models"]["fading"]["flag_counts"] == dict(clean, fades_out=2)
    assert summary["models"]["noise"]["flag_counts"] == dict(clean, noisy=2)
    assert summary["models"]["clipped"]["flag_counts"] == dict(clean, clipping=2)
    for name in ("varied_beat", "drum_loop"):  # strong beats, repeating bars: neither a loop nor crackle
        assert summary["models"][name]["flag_counts"] == clean, name
    assert summary["models"]["repetitive"]["flag_counts"] == dict(clean, repetitive=2)
    assert summary["models"]["crackle"]["flag_counts"] == dict(clean, crackle=2)
    assert [u["wav"].endswith("99_corrupt.wav") for u in summary["unreadable"]] == [True]
    rows = [json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines()]
    assert len(rows) == 19 and sum(1 for r in rows if r.get("error")) == 1
    assert "steady: 0/2 fade out, 0/2 noisy, 0/2 silent, 0/2 clipping, 0/2 repetitive, 0/2 crackle" in proc.stdout
    # A loop from 7 s and one from the start; the measure dates the second "at the latest": ~6 s.
    assert re.search(r"repetitive: 0/2 fade out, 0/2 noisy, 0/2 silent, 0/2 clipping, 2/2 repetitive "
                     r"from \d+\.\d-\d+\.\d s, 0/2 crackle", proc.stdout), proc.stdout
    assert "noise: 0/2 fade out, 2/2 noisy" in proc.stdout
    assert (out / "report.html").is_file()


STEREO_REPORT_JS = """
return {format: document.querySelector('#format').textContent,
        header: [...document.querySelectorAll('#models th, #flags th')].map(th => th.textContent),
        rows: [...document.querySelectorAll('#models tr')].slice(1).map(tr =>
              [tr.querySelector('td.model').textContent, tr.querySelector('td.verdict').className]),
        notes: [...document.querySelectorAll('.flag.note')].map(s => s.textContent),
        text: document.body.innerText};
"""


@pytest.mark.slow
def test_score_only_stereo_wavs(tmp_path):
    """2-channel WAVs through --score_only: channels and stereo measures per clip, each stereo flag on
    its own folder, mono folders untouched, and the report showing the format and the measures."""
    clips, out = tmp_path / "clips", tmp_path / "scored"
    run_script("make_test_signals.py", "--output_dir", clips, "--stereo", "--duration", 6)
    assert sf.info(str(clips / "stereo" / "01_chord_stereo.wav")).channels == 2
    assert sf.info(str(clips / "steady" / "01_chord.wav")).channels == 1
    proc = run_script("evaluate.py", "--score_only", "--input_dir", clips, "--output_dir", out)
    summary = json.loads((out / "summary.json").read_text())
    models = summary["models"]
    mono_clean = {"fades_out": 0, "noisy": 0, "silent": 0, "clipping": 0, "repetitive": 0, "crackle": 0}
    stereo_clean = dict(mono_clean, collapsed_to_mono=0, phase_inverted=0)
    assert models["steady"]["flag_counts"] == mono_clean and models["steady"]["channels"] == 1
    assert "lr_correlation" not in models["steady"]
    assert models["stereo"]["flag_counts"] == stereo_clean and models["stereo"]["channels"] == 2
    assert models["collapsed"]["flag_counts"] == dict(stereo_clean, collapsed_to_mono=2)
    assert models["phase_inverted"]["flag_counts"] == dict(stereo_clean, phase_inverted=2)
    assert models["stereo"]["lr_correlation"] == pytest.approx(0.66, abs=0.03)
    assert models["phase_inverted"]["lr_correlation"] == pytest.approx(-0.66, abs=0.03)
    assert models["collapsed"]["side_mid_db"] < -60
    # The mid of stereo/ is the mono chord (16-bit rounding apart).
    assert models["stereo"]["integrated_lufs"] == pytest.approx(models["steady"]["integrated_lufs"], abs=0.05)
    assert "collapsed: 0/2 fade out, 0/2 noisy, 0/2 silent, 0/2 clipping, 0/2 repetitive, 0/2 crackle, " \
           "2/2 collapsed to mono, 0/2 phase inverted" in proc.stdout
    assert "steady: 0/2 fade out, 0/2 noisy, 0/2 silent, 0/2 clipping, 0/2 repetitive, 0/2 crackle;" in proc.stdout
    # The new failure signals at 6 s: each still raises its own flag only.
    assert models["repetitive"]["flag_counts"] == dict(mono_clean, repetitive=2)
    assert models["crackle"]["flag_counts"] == dict(mono_clean, crackle=2)
    assert any(n.startswith("Stereo clips:") for n in summary["notes"])
    rows = {r["wav"].split("/")[-1]: r for r in
            (json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines())}
    assert len(rows) == 24
    for name, r in rows.items():
        stereo = r["model"] in ("stereo", "collapsed", "phase_inverted")
        assert r["channels"] == r["metrics"]["channels"] == (2 if stereo else 1), name
        assert (r["metrics"]["lr_correlation"] is None) == (not stereo), name
        assert (r["metrics"]["side_mid_db"] is None) == (not stereo), name
        assert set(r["flags"]) == (STEREO_CLIP_FLAGS if stereo else set(mono_clean)), name
    html = (out / "report.html").read_text()
    assert "mono, 1 channel, 32 kHz; stereo, 2 channels, 32 kHz" in html
    assert "stereo (2 ch) &middot; L/R corr 0.6" in html and "mean L/R corr" in html
    if all(find_chromium()):
        with chromium_session() as browser:
            browser.get((out / "report.html").as_uri())
            page = browser.execute(STEREO_REPORT_JS)
        assert page["format"] == "mono, 1 channel, 32 kHz; stereo, 2 channels, 32 kHz"
        assert {"channels", "mean L/R corr", "mean side/mid dB", "collapsed_to_mono", "phase_inverted"} <= \
               set(page["header"])
        verdict_class = dict(page["rows"])
        # Collapsed to mono is a note (amber), phase inversion a fault (red), clean stereo neither.
        assert verdict_class["collapsed"] == "verdict warn" and verdict_class["phase_inverted"] == "verdict bad"
        assert verdict_class["stereo"] == "verdict" and verdict_class["steady"] == "verdict"
        assert page["notes"] == ["collapsed_to_mono"] * 2
        assert not re.search(r"-0\.0+(?![0-9])", page["text"])  # no negative zero ("-0.0"); -0.06 is a number


def test_evaluate_a_stereo_model_scores_two_channels(tiny_stereo_model_dir, tmp_path):
    """Generated stereo clips (samples, 2) through compare and scoring: 2-channel WAVs, rows and the
    model's summary with channels and the stereo measures, the report's format line."""
    out = tmp_path / "eval"
    run_script("evaluate.py", "--base_model_path", tiny_stereo_model_dir, "--test_prompts", "dark trap 808",
               "lofi piano", "--duration", 1, "--output_dir", out, "--no_progress")
    rows = [json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert sf.info(str(out / r["wav"])).channels == 2
        assert r["channels"] == r["metrics"]["channels"] == 2 and set(r["flags"]) == STEREO_CLIP_FLAGS
        assert isinstance(r["metrics"]["lr_correlation"], float) and isinstance(r["metrics"]["side_mid_db"], float)
    base = json.loads((out / "summary.json").read_text())["models"]["base_model"]
    assert base["channels"] == 2 and set(base["flag_counts"]) == STEREO_CLIP_FLAGS
    assert isinstance(base["lr_correlation"], float)
    assert 'id="format">stereo, 2 channels, 32 kHz<' in (out / "report.html").read_text()


def test_read_clip_keeps_channels_and_resamples(tmp_path):
    from musicgen_lora.evaluation.scoring import read_clip

    stereo = stereo_chord(1.0, 44100)
    sf.write(str(tmp_path / "s.wav"), stereo, 44100)
    sf.write(str(tmp_path / "m.flac"), stereo[:, 0], 44100)
    wav = read_clip(tmp_path / "s.wav", SR)
    assert wav.shape == (SR, 2) and wav.dtype == np.float32
    assert np.corrcoef(wav[:, 0], wav[:, 1])[0, 1] == pytest.approx(np.corrcoef(stereo.T)[0, 1], abs=0.01)
    assert read_clip(tmp_path / "m.flac", SR).shape == (SR,)


def test_training_curves_png(trained_run):
    run, _ = trained_run
    png = run / "logs" / "training_curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from musicgen_lora.reporting.curves import training_curves_png

    # Redrawn from metrics.jsonl alone (a run's log is enough to plot it again).
    again = training_curves_png(run / "logs" / "metrics.jsonl", run / "logs" / "again.png")
    assert again.stat().st_size > 10_000
    assert training_curves_png(run / "logs" / "missing.jsonl", run / "logs" / "x.png") is None
    again.unlink()


def test_clap_similarity_with_a_tiny_offline_clap(tiny_model_dir, tmp_path):
    from tiny_clap import build_tiny_clap

    clap = build_tiny_clap(tmp_path / "tiny-clap")
    out = tmp_path / "eval"
    proc = run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--test_prompts", "dark trap 808",
                      "lofi piano", "--duration", 1, "--clap_model_path", clap, "--output_dir", out, "--no_progress")
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines()]
    sims = [r["metrics"]["clap_similarity"] for r in rows]
    assert len(sims) == 2 and all(-1 <= s <= 1 for s in sims)
    from musicgen_lora.evaluation.clap import ClapScorer

    scorer = ClapScorer(str(clap))
    noise = white_noise(2.0, rms=0.3)
    pair = scorer.similarity(["dark trap 808"] * 2, [chord_with_beat(2.0), noise], SR)
    assert pair[0] != pair[1]  # the audio changes the score
    assert scorer.similarity(["dark trap 808"], [noise], SR) == pytest.approx(pair[1:], abs=1e-6)  # deterministic
    base = summary["models"]["base_model"]
    assert base["clap_similarity"] == pytest.approx(np.mean(sims))
    assert "CLAP" in base["verdict"] and base["verdict"] in proc.stdout
    assert not any("CLAP similarity skipped" in n for n in summary["notes"])
    # A folder that is not a CLAP model is one clear line.
    bad = run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--test_prompts", "x", "--duration", 0.5,
                     "--clap_model_path", tmp_path, "--output_dir", tmp_path / "o", check=False)
    assert bad.returncode == 2 and "--clap_model_path" in bad.stderr and "Traceback" not in bad.stderr
