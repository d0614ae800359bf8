"""Objective evaluation: every flag and threshold on constructed signals, FAD, held-out loss, --score_only."""
import json

import numpy as np
import pytest

import musicgen_lora.evaluation.metrics as am
from musicgen_lora.evaluation.style_distance import frechet_distance
from musicgen_lora.testing.signals import chord_with_beat, clipped, fade, silent_tail, white_noise

from conftest import run_script

SR = 32000


def test_steady_chord_with_beat_passes():
    r = am.score_clip(chord_with_beat(), SR)
    assert r["flags"] == {"fades_out": False, "noisy": False, "silent": False, "clipping": False}
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


def test_fad_is_zero_on_itself_and_grows_with_noise(tiny_model_dir):
    from musicgen_lora.evaluation.style_distance import encodec_embeddings
    from musicgen_lora.modeling import load_model_and_processor

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
    from musicgen_lora.modeling import load_model_and_processor

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
        assert m["num_clips"] == 2 and set(m["flag_counts"]) == {"fades_out", "noisy", "silent", "clipping"}
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
        assert set(r["flags"]) == {"fades_out", "noisy", "silent", "clipping"}
        assert r["metrics"]["duration_s"] == pytest.approx(1.5)
        assert len(r["loudness_trajectory"]) >= 1
    assert len(list((out / "plots").glob("*_loudness.png"))) == 2
    html = (out / "report.html").read_text()
    assert 'id="models"' in html and "held-out loss" in html
    assert any("CLAP similarity skipped" in note for note in summary["notes"])


def test_score_only_constructed_signals_with_a_corrupt_file(tmp_path):
    """make_test_signals.py's known answers through --score_only: each case flagged, the rest clean."""
    clips, out = tmp_path / "clips", tmp_path / "scored"
    run_script("make_test_signals.py", "--output_dir", clips, "--corrupt")
    proc = run_script("evaluate.py", "--score_only", "--input_dir", clips, "--output_dir", out)
    assert "99_corrupt.wav" in proc.stderr and "unreadable" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    expected = {"steady": None, "fading": "fades_out", "noise": "noisy", "silent_tail": "silent",
                "clipped": "clipping"}
    assert set(summary["models"]) == set(expected)
    for name, flag in expected.items():
        m = summary["models"][name]
        assert m["num_clips"] == 2, name
        if flag:
            assert m["flag_counts"][flag] == 2, (name, m["flag_counts"])
        assert m["held_out_loss"] is None and m["fad"] is None
    clean = {"fades_out": 0, "noisy": 0, "silent": 0, "clipping": 0}
    assert summary["models"]["steady"]["flag_counts"] == clean
    # Each failure is caught by its own flag, not by all of them (a stopped clip also reads as a fade).
    assert summary["models"]["fading"]["flag_counts"] == dict(clean, fades_out=2)
    assert summary["models"]["noise"]["flag_counts"] == dict(clean, noisy=2)
    assert summary["models"]["clipped"]["flag_counts"] == dict(clean, clipping=2)
    assert [u["wav"].endswith("99_corrupt.wav") for u in summary["unreadable"]] == [True]
    rows = [json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines()]
    assert len(rows) == 11 and sum(1 for r in rows if r.get("error")) == 1
    assert "steady: 0/2 fade out, 0/2 noisy, 0/2 silent, 0/2 clipping" in proc.stdout
    assert "noise: 0/2 fade out, 2/2 noisy" in proc.stdout
    assert (out / "report.html").is_file()


def test_training_curves_png(trained_run):
    run, _ = trained_run
    png = run / "logs" / "training_curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from musicgen_lora.plotting import training_curves_png

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
