"""evaluate.py: base/best/final side by side, fair pairing, the listening report in a real browser."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from browser import chromium_session, find_chromium, media_state
from conftest import ROOT, assert_one_line_error, run_script

PROMPTS_8 = ROOT / "finetune" / "data" / "eval" / "evaluation_prompts_8.json"
DURATION = 1.0
ROW_KEYS = {"prompt_id", "prompt", "model", "adapter_path", "wav", "seed", "settings"}




def _rows(out):
    return [json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def compare_multi(tiny_model_dir, trained_run, tmp_path_factory):
    """The seeds' review gate on the tiny model: 8 prompts x base/best/final, run dir as --lora_model_path."""
    run, _ = trained_run
    out = tmp_path_factory.mktemp("eval") / "evaluation"
    proc = run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--lora_model_path", run,
                      "--test_prompts_file", PROMPTS_8, "--output_dir", out, "--duration", DURATION,
                      "--compare_multi", "--seed", 7, "--no_progress")
    return out, proc.stdout + proc.stderr


@pytest.mark.slow
def test_compare_multi_writes_clips_results_and_report(compare_multi, trained_run):
    out, _ = compare_multi
    run, _ = trained_run
    prompts = json.loads(PROMPTS_8.read_text())
    assert len(prompts) == 8
    wavs = sorted(out.glob("*/*.wav"))
    assert len(wavs) == 24
    assert {w.parent.name for w in wavs} == {"base_model", "best_model", "final_model"}
    for w in wavs:
        info = sf.info(str(w))
        assert info.samplerate == 32000 and info.frames == int(DURATION * 32000) and info.subtype == "PCM_16"
    rows = _rows(out)
    assert len(rows) == 24
    for r in rows:
        assert ROW_KEYS <= set(r), set(r)
        assert (out / r["wav"]).is_file() and not Path(r["wav"]).is_absolute()
        assert r["settings"]["duration"] == DURATION and r["settings"]["guidance_scale"] == 3.0
    adapters = {r["model"]: r["adapter_path"] for r in rows}
    assert adapters == {"base_model": None, "best_model": str(run / "best_model"),
                        "final_model": str(run / "final_model")}
    # Fair: each prompt has one seed across the three models.
    for p in prompts:
        seeds = {r["seed"] for r in rows if r["prompt_id"] == p["id"]}
        assert len(seeds) == 1 and len([r for r in rows if r["prompt_id"] == p["id"]]) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"base_model", "best_model", "final_model"}
    assert all(m["num_clips"] == 8 for m in summary["models"].values())
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_same_seed_gives_the_same_clips_across_runs(compare_multi, tiny_model_dir, trained_run, tmp_path):
    """Pairing: a second run (other adapter set, so other swap order) reproduces base and best clips."""
    out, _ = compare_multi
    run, _ = trained_run
    out2 = tmp_path / "again"
    run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--lora_model_path", run / "best_model", "--compare",
               "--test_prompts_file", PROMPTS_8, "--output_dir", out2, "--duration", DURATION, "--seed", 7,
               "--no_progress")
    first = {(r["model"], r["prompt_id"]): r for r in _rows(out)}
    second = _rows(out2)
    assert {r["model"] for r in second} == {"base_model", "lora_model"}
    for r in second:
        twin = first[("base_model" if r["model"] == "base_model" else "best_model", r["prompt_id"])]
        np.testing.assert_array_equal(sf.read(str(out2 / r["wav"]))[0], sf.read(str(out / twin["wav"]))[0])
    # ...while the adapters really change the audio.
    base = sf.read(str(out / first[("base_model", "01_trap_808")]["wav"]))[0]
    final = sf.read(str(out / first[("final_model", "01_trap_808")]["wav"]))[0]
    assert np.abs(base - final).max() > 0


PAGE_JS = """
return {
  groups: [...document.querySelectorAll('section.prompt-group')].map(g => [g.querySelector('h2').textContent,
           [...g.querySelectorAll('td .small')].map(d => d.textContent).filter(t => t.endsWith('.wav'))
           .map(t => t.split('/').pop())]),
  modelHeader: [...document.querySelectorAll('#models th')].map(th => th.textContent),
  verdicts: [...document.querySelectorAll('#models td.verdict')].map(td => td.textContent),
  runLinks: [...document.querySelectorAll('#runs a')].map(a => [a.textContent, a.getAttribute('href')]),
  text: document.body.innerText,
  meta: document.querySelector('p.meta').textContent,
  overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
  best: [...document.querySelectorAll('#models td.best')].length,
};
"""


@pytest.mark.slow
@pytest.mark.skipif(not all(find_chromium()), reason="chromium/chromedriver missing: run tests/setup.sh")
def test_report_opens_in_headless_chromium(compare_multi, tmp_path):
    out, _ = compare_multi
    # Moved folder, as a user zips and shares it: every link is relative.
    moved = tmp_path / "moved evaluation"
    shutil.copytree(out, moved)
    with chromium_session() as browser:
        browser.get((moved / "report.html").as_uri())
        state = media_state(browser)
        page = browser.execute(PAGE_JS)
        browser.screenshot(moved / "report_screenshot.png")
    # Each prompt's heading and its clips' files carry the same id (01_trap_808 over 01_trap_808.wav).
    for heading, wavs in page["groups"]:
        assert wavs and all(Path(w).stem == heading for w in wavs), (heading, wavs)
    assert page["modelHeader"][:2] == ["model", "verdict"] and len(page["verdicts"]) == 3
    assert all("fade out" in v for v in page["verdicts"])
    assert "-0.0" not in page["text"]
    # Layout: the page never scrolls sideways (wide tables scroll in their own box), the best model of a
    # lower-/higher-is-better column is marked, and the header speaks words, not Python values.
    assert page["overflow"] <= 0, page["overflow"]
    assert "held-out loss \u2193" in page["modelHeader"] and page["best"] >= 1
    assert "None" not in page["meta"] and "False" not in page["meta"] and "True" not in page["meta"]
    # The run's training curves and review are linked, and travel with the folder.
    assert sorted(text for text, _ in page["runLinks"]) == ["review of the logs", "training curves"]
    assert all((moved / href).is_file() for _, href in page["runLinks"])
    assert state["groups"] == 8
    assert len(state["audio"]) == 24
    for a in state["audio"]:
        assert a["error"] is None and a["ready"] >= 1, a
        assert abs(a["duration"] - DURATION) < 0.05, a
    assert len(state["img"]) >= 24
    for img in state["img"]:
        assert img["complete"] and img["width"] > 0, img
    shot = (moved / "report_screenshot.png").read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    print(f"report screenshot: {moved / 'report_screenshot.png'}")


def test_bad_input_is_one_clear_line(tiny_model_dir, trained_run, tmp_path):
    run, _ = trained_run
    common = ["--base_model_path", tiny_model_dir, "--duration", 0.5, "--no_progress"]
    missing = tmp_path / "nope.json"
    proc = run_script("evaluate.py", *common, "--test_prompts_file", missing, "--output_dir", tmp_path / "o1",
                      check=False)
    assert_one_line_error(proc, str(missing), "not found")
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    proc = run_script("evaluate.py", *common, "--test_prompts_file", empty, "--output_dir", tmp_path / "o2",
                      check=False)
    assert_one_line_error(proc, str(empty), "empty")
    not_adapter = tmp_path / "not_an_adapter"
    not_adapter.mkdir()
    (not_adapter / "weights.bin").write_bytes(b"x")
    proc = run_script("evaluate.py", *common, "--test_prompts", "x", "--compare", "--lora_model_path", not_adapter,
                      "--output_dir", tmp_path / "o3", check=False)
    assert_one_line_error(proc, str(not_adapter), "adapter_config.json")
    # A run directory given to --compare gets pointed at best_model/.
    proc = run_script("evaluate.py", *common, "--test_prompts", "x", "--compare", "--lora_model_path", run,
                      "--output_dir", tmp_path / "o4", check=False)
    assert_one_line_error(proc, "training run directory", "best_model")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
    # Files evaluate.py did not record writing are never overwritten, with or without --overwrite.
    (tmp_path / "o5").mkdir()
    (tmp_path / "o5" / "comparison_results.jsonl").write_text("keep")
    for extra in ([], ["--overwrite"]):
        proc = run_script("evaluate.py", *common, "--test_prompts", "x", "--output_dir", tmp_path / "o5", *extra,
                          check=False)
        assert_one_line_error(proc, "did not write", "comparison_results.jsonl")
    assert (tmp_path / "o5" / "comparison_results.jsonl").read_text() == "keep"


def test_run_dir_supplies_its_own_validation_set(trained_run, tiny_model_dir, tmp_path):
    """Without --data_dir, held-out numbers come from the evaluated run's data (its run_config.json)."""
    run, _ = trained_run
    out = tmp_path / "eval"
    proc = run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--lora_model_path", run, "--compare_multi",
                      "--test_prompts", "lo-fi hip hop beat", "--duration", 0.5, "--output_dir", out, "--no_progress")
    assert "held-out loss and FAD on the run's validation set" in proc.stdout + proc.stderr
    models = json.loads((out / "summary.json").read_text())["models"]
    trained = json.loads((run / "logs" / "summary.json").read_text())
    assert models["base_model"]["held_out_loss"] == pytest.approx(trained["base_valid_loss"], abs=1e-4)
    assert models["best_model"]["held_out_loss"] == pytest.approx(trained["best_valid_loss"], abs=1e-4)
