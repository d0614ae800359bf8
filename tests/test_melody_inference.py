"""Melody conditioning at inference and evaluation (MusicGen-Melody): prompt files with a melody per
prompt, inference_lora.py --melody, evaluate.py's chroma cosine, ignores_melody flag and the reference
melody in the report -- on the tiny offline melody checkpoint (make_tiny_model.py --melody) and real WAVs.
(Training with a melody: test_melody.py.)"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_lora.core.common import UserError
from musicgen_lora.evaluation.signals import note_sequence
from musicgen_lora.generation.generate import generate_audio, job_chroma, read_melodies
from musicgen_lora.generation.prompts import Prompt, load_prompts, plan_jobs
from musicgen_lora.generation.sampling import GenerationSettings, SamplingSettings
from musicgen_lora.model.checkpoint import load_model_and_processor

from browser import chromium_session, find_chromium, media_state
from conftest import assert_one_line_error, run_script

SR = 32000
TUNE = (0, 4, 7, 11, 2, 5, 9, 0, 4, 7, 11, 2)  # a C major walk, 0.5 s a note: 6 s
TRITONE = tuple((n + 6) % 12 for n in TUNE)  # the same tune a tritone away: every pitch class changes


@pytest.fixture(scope="module")
def melodies(tmp_path_factory):
    """Real WAVs: the tune as a 44.1 kHz stereo file (read as its mono mix at the model's 32 kHz), the
    tritone tune at 32 kHz mono, and a file no decoder reads."""
    folder = tmp_path_factory.mktemp("melodies")
    tune = note_sequence(TUNE, sr=44100)
    sf.write(str(folder / "tune.wav"), np.stack([tune, 0.5 * tune], axis=1), 44100)
    sf.write(str(folder / "tritone.wav"), note_sequence(TRITONE), SR)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return folder


def test_prompt_files_take_a_melody_per_prompt(melodies, tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(melodies / "tune.wav", tmp_path / "sub" / "tune.wav")
    f = tmp_path / "prompts.json"
    f.write_text(json.dumps(["plain text", {"prompt": "lo-fi", "id": "lofi", "melody": "sub/tune.wav"},
                             {"prompt": "trap", "melody": str(melodies / "tritone.wav"), "seed": 3},
                             {"prompt": "no melody", "melody": None}]))
    prompts = load_prompts(f)
    assert [(p.id, p.melody) for p in prompts] == [
        ("00_plain-text", None), ("lofi", str((tmp_path / "sub" / "tune.wav").resolve())),
        ("02_trap", str(melodies / "tritone.wav")), ("03_no-melody", None)]
    assert prompts[2].seed == 3
    # --melody: every prompt without a melody of its own (a prompt's own wins, as its seed over --seed).
    with_flag = load_prompts(f, ["extra"], melody=str(melodies / "tritone.wav"))
    assert [Path(p.melody).name for p in with_flag] == ["tritone.wav", "tune.wav", "tritone.wav", "tritone.wav",
                                                        "tritone.wav"]
    assert plan_jobs(with_flag, 2, 0)[2].prompt.melody == with_flag[1].melody  # jobs carry it
    # Every earlier format reads as before, with no melody.
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    assert [p.melody for p in load_prompts(tmp_path / "p.txt")] == [None, None]
    for bad, needle in (('[{"prompt": "x", "melody": "sub/missing.wav"}]', "missing.wav not found"),
                        ('[{"prompt": "x", "melody": 3}]', "not a file path"),
                        ('[{"prompt": "x", "melody": ""}]', "not a file path")):
        f.write_text(bad)
        with pytest.raises(UserError, match=needle):
            load_prompts(f)
    with pytest.raises(UserError, match="--melody: melody file .*nope.wav not found"):
        load_prompts(None, ["x"], melody=str(tmp_path / "nope.wav"))


def test_inference_with_and_without_a_melody(tiny_melody_model_dir, melodies, tmp_path):
    common = ["--base_model_path", tiny_melody_model_dir, "--duration", 1, "--no_progress"]
    proc = run_script("inference_lora.py", *common, "--prompts", "lo-fi beat", "dark trap", "--melody",
                      melodies / "tune.wav", "--output_dir", tmp_path / "with")
    assert "melody: 2 of 2 prompt(s) follow tune.wav" in proc.stderr
    plain = run_script("inference_lora.py", *common, "--prompts", "lo-fi beat", "--output_dir", tmp_path / "without")
    assert "a MusicGen-Melody model without a melody (the null melody" in plain.stderr
    # A prompts file: a melody per prompt, relative to the file; the prompt without one gets the null melody.
    f = tmp_path / "prompts.json"
    shutil.copy(melodies / "tritone.wav", tmp_path / "tritone.wav")
    f.write_text(json.dumps([{"id": "tri", "prompt": "lo-fi beat", "melody": "tritone.wav"}, "dark trap"]))
    mixed = run_script("inference_lora.py", *common, "--prompts_file", f, "--output_dir", tmp_path / "file")
    assert "melody: 1 of 2 prompt(s) follow tritone.wav; the others get the null melody" in mixed.stderr
    expected = {"with": {"00_lo-fi-beat": melodies / "tune.wav", "01_dark-trap": melodies / "tune.wav"},
                "without": {"00_lo-fi-beat": None},
                "file": {"tri": tmp_path / "tritone.wav", "01_dark-trap": None}}
    for folder, clips in expected.items():
        assert sorted(p.stem for p in (tmp_path / folder).glob("*.wav")) == sorted(clips)
        for stem, melody in clips.items():
            info = sf.info(str(tmp_path / folder / f"{stem}.wav"))
            assert info.samplerate == SR and info.frames == SR and info.channels == 1
            side = json.loads((tmp_path / folder / f"{stem}.json").read_text())
            assert side["melody"] == (str(melody.resolve()) if melody else None), (folder, stem)


def test_a_melody_where_none_can_go_is_one_line(tiny_model_dir, tiny_melody_model_dir, melodies, tmp_path):
    """--melody (or melodies in a prompts file) on a text-only MusicGen, and melody files that are not
    there or not audio: one error line each, nothing written."""
    out = tmp_path / "o"
    text_only = ["--base_model_path", tiny_model_dir, "--duration", 0.5, "--output_dir", out]
    proc = run_script("inference_lora.py", *text_only, "--prompts", "x", "--melody", melodies / "tune.wav", check=False)
    assert_one_line_error(proc, "--melody", "text-only MusicGen", "MusicGen-Melody")
    proc = run_script("evaluate.py", *text_only, "--test_prompts", "x", "--melody", melodies / "tune.wav", check=False)
    assert_one_line_error(proc, "--melody", "text-only MusicGen")
    f = tmp_path / "prompts.json"
    f.write_text(json.dumps([{"id": "tune", "prompt": "x", "melody": str(melodies / "tune.wav")}]))
    proc = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts_file", f, "--duration", 0.5,
                      "--output_dir", out, check=False)
    assert_one_line_error(proc, str(f), "'tune' has a melody", "text-only MusicGen")
    on_melody = ["--base_model_path", tiny_melody_model_dir, "--prompts", "x", "--duration", 0.5, "--output_dir", out]
    proc = run_script("inference_lora.py", *on_melody, "--melody", tmp_path / "missing.wav", check=False)
    assert_one_line_error(proc, "--melody", "missing.wav not found")
    proc = run_script("inference_lora.py", *on_melody, "--melody", melodies / "corrupt.wav", check=False)
    assert_one_line_error(proc, "corrupt.wav", "cannot decode audio", "pass another melody file")
    assert not out.exists()


def test_generation_follows_the_melody_it_is_given(tiny_melody_model_dir, melodies):
    """Guard against transformers' "melody generate ignoring input_features" bug, through the project's
    path (melody files -> read_melodies -> chroma -> generate_audio): two melodies give two generations,
    the same melody twice the same one, and each clip depends on its own melody, not on its batch.

    A random tiny model barely listens to its prefix: its chroma projection has transformers' init
    (std 0.02), so a melody moves the logits by ~0.4%, and at guidance 3 two melodies gave the same
    codes, sampled or greedy (measured). Classifier-free guidance multiplies the conditional-minus-
    unconditional logits (the unconditional half has the null melody), so at guidance 30 the melody
    decides some argmaxes. Were input_features dropped, every row below would be the null melody's codes."""
    model, processor = load_model_and_processor(str(tiny_melody_model_dir))
    tune, tritone = str(melodies / "tune.wav"), str(melodies / "tritone.wav")
    prompts = [Prompt("a", "lo-fi beat", melody=tune), Prompt("b", "lo-fi beat", melody=tritone),
               Prompt("c", "lo-fi beat", melody=tune), Prompt("d", "lo-fi beat")]
    jobs = plan_jobs(prompts, 1, 0)
    chroma = job_chroma(jobs, read_melodies(jobs, SR), SR)
    assert chroma[3] is None and torch.equal(chroma[0], chroma[2]) and not torch.equal(chroma[0], chroma[1])

    def codes(rows, batch_size):
        _, out = generate_audio(model, processor, ["lo-fi beat"] * len(rows),
                                GenerationSettings(2.0, SamplingSettings(guidance_scale=30, greedy=True),
                                                   batch_size=batch_size),
                                progress=False, return_codes=True, chroma=rows)
        return out

    batched = codes(chroma, 2)  # [tune, tritone] and [tune, none]: the second batch is where slicing could slip
    differ = float((batched[0] != batched[1]).float().mean())
    null = float((batched[0] != batched[3]).float().mean())
    print(f"codes differing: tune vs tritone {differ:.1%}, tune vs no melody {null:.1%} "
          f"({batched[0].numel()} codes each)")
    assert torch.equal(batched[0], batched[2])  # the same melody, the same codes
    assert differ > 0 and null > 0  # any code at all: the melody reached the model (measured: 2.3% and 4.5%)
    for i in (0, 1, 3):  # alone, in a batch of one: the same codes as in its batch
        assert torch.equal(codes(chroma[i:i + 1], 1)[0], batched[i]), i


@pytest.fixture(scope="module")
def melody_evaluation(tiny_melody_model_dir, melodies, example_data_dir, tmp_path_factory):
    """A short real training run on the melody model (train_lora.py), then evaluate.py --compare_multi
    on its run dir (held-out loss on the run's own validation set): one prompt with a melody
    (relative to the prompts file), one without."""
    root = tmp_path_factory.mktemp("melody_eval")
    train = run_script("train_lora.py", "--model_path", tiny_melody_model_dir, "--data_dir", example_data_dir,
                       "--output_dir", root / "run", "--num_epochs", 2, "--batch_size", 4,
                       "--gradient_accumulation_steps", 1, "--learning_rate", 3e-3, "--warmup_steps", 1,
                       "--logging_steps", 1, "--save_steps", 2, "--target_duration", 6, "--no_progress")
    assert (root / "run" / "best_model").is_dir() and (root / "run" / "final_model").is_dir(), train.stderr[-2000:]
    (root / "prompts").mkdir()
    shutil.copy(melodies / "tune.wav", root / "prompts" / "tune.wav")
    prompts = root / "prompts" / "melody_prompts.json"
    prompts.write_text(json.dumps([{"id": "tune_lofi", "prompt": "lo-fi hip hop, mellow rhodes", "melody": "tune.wav"},
                                   {"id": "plain_trap", "prompt": "dark trap beat"}]))
    out = root / "evaluation"
    proc = run_script("evaluate.py", "--base_model_path", tiny_melody_model_dir, "--lora_model_path", root / "run",
                      "--compare_multi", "--test_prompts_file", prompts, "--output_dir", out, "--duration", 1,
                      "--no_progress")
    return out, root / "prompts" / "tune.wav", proc, root / "run"


@pytest.mark.slow
def test_evaluate_scores_each_clip_against_its_melody(melody_evaluation):
    out, tune, proc, run = melody_evaluation
    rows = [json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    # The reference melody travels with the evaluation: as the model heard it (mono, 32 kHz).
    info = sf.info(str(out / "melodies" / "tune.wav"))
    assert info.channels == 1 and info.samplerate == SR and info.frames == pytest.approx(6 * SR, abs=2)
    for r in rows:
        side = json.loads((out / r["wav"]).with_suffix(".json").read_text())
        if r["prompt_id"] == "tune_lofi":
            assert r["melody"] == "melodies/tune.wav" and r["melody_source"] == str(tune.resolve())
            assert side["melody"] == str(tune.resolve()) and side["melody_copy"] == "../melodies/tune.wav"
            assert -1.0 <= r["metrics"]["chroma_cosine"] <= 1.0
            # Adapters are measured against the base model's clip; the base model itself is not.
            assert ("ignores_melody" in r["flags"]) == (r["model"] != "base_model")
        else:
            assert r["melody"] is None and side["melody"] is None
            assert "chroma_cosine" not in r["metrics"] and "ignores_melody" not in r["flags"]
    summary = json.loads((out / "summary.json").read_text())
    for name, m in summary["models"].items():
        assert isinstance(m["chroma_cosine"], float) and m["verdict"] in proc.stdout
        assert "chroma cosine" in m["verdict"]
        if name == "base_model":
            assert "ignores_melody" not in m["flag_counts"]
        else:  # counted out of the one clip that has a melody, not the two clips
            assert m["flag_clips"] == {"ignores_melody": 1} and "/1 ignore the melody" in m["verdict"]
    assert any(n.startswith("Melody: chroma_cosine") for n in summary["notes"])
    assert "ignores_melody" in summary["thresholds"]
    # Held-out loss on the run's validation clips, each window with its own chroma as the trainer's
    # validation had it: the same numbers (the null melody instead gives the base model 2.8e-4 more).
    trained = json.loads((run / "logs" / "summary.json").read_text())
    assert summary["models"]["base_model"]["held_out_loss"] == pytest.approx(trained["base_valid_loss"], abs=1e-5)
    assert summary["models"]["best_model"]["held_out_loss"] == pytest.approx(trained["best_valid_loss"], abs=1e-5)


MELODY_PAGE_JS = """
return [...document.querySelectorAll('section.prompt-group')].map(g => ({
  heading: g.querySelector('h2').textContent,
  rows: [...g.querySelectorAll('tr')].slice(1).map(tr => tr.querySelector('td.model').textContent),
  melodies: [...g.querySelectorAll('tr.melody audio')].map(a => a.getAttribute('src')),
  text: g.innerText,
}));
"""


@pytest.mark.slow
def test_report_plays_the_reference_melody_beside_the_clips(melody_evaluation, tmp_path):
    out = melody_evaluation[0]
    html = (out / "report.html").read_text()
    assert 'src="melodies/tune.wav"' in html and "chroma cos" in html
    if not all(find_chromium()):
        pytest.skip("chromium/chromedriver missing: run tests/setup.sh (the HTML was checked above)")
    moved = tmp_path / "moved evaluation"  # as a user zips and shares it: every link is relative
    shutil.copytree(out, moved)
    with chromium_session() as browser:
        browser.get((moved / "report.html").as_uri())
        state = media_state(browser)
        groups = {g["heading"]: g for g in browser.execute(MELODY_PAGE_JS)}
    assert groups["tune_lofi"]["rows"] == ["reference melody", "base_model", "best_model", "final_model"]
    assert groups["tune_lofi"]["melodies"] == ["melodies/tune.wav"] and "chroma cos" in groups["tune_lofi"]["text"]
    assert groups["plain_trap"]["rows"] == ["base_model", "best_model", "final_model"]
    assert not groups["plain_trap"]["melodies"] and "chroma cos" not in groups["plain_trap"]["text"]
    assert len(state["audio"]) == 7
    for a in state["audio"]:
        assert a["error"] is None and a["ready"] >= 1, a
    melody = [a for a in state["audio"] if a["src"].endswith("/melodies/tune.wav")]
    assert len(melody) == 1 and abs(melody[0]["duration"] - 6.0) < 0.05


def test_score_only_flags_an_adapter_that_ignores_the_melody(melodies, tmp_path):
    """Known answers through --score_only: sidecars name the reference melody; the base model's clip
    is the tune itself, one adapter's is the tune a tritone away (every pitch class moved: flagged),
    the other's is the tune quieter with noise (the same melody: not flagged). The melody file inside
    the folder is a reference, not a clip; a clip without a melody gets neither the metric nor the flag."""
    clips = tmp_path / "clips"
    tune = note_sequence(TUNE)
    rng = np.random.default_rng(0)
    cases = {"base_model": tune, "best_model": note_sequence(TRITONE),
             "final_model": 0.5 * tune + 0.02 * rng.standard_normal(len(tune)).astype(np.float32)}
    (clips / "refs").mkdir(parents=True)
    sf.write(str(clips / "refs" / "tune.wav"), tune, SR)
    for model, wav in cases.items():
        (clips / model).mkdir()
        sf.write(str(clips / model / "tune.wav"), wav, SR)
        (clips / model / "tune.json").write_text(json.dumps({"prompt_id": "tune", "seed": 1,
                                                             "melody": str(clips / "refs" / "tune.wav")}))
        sf.write(str(clips / model / "plain.wav"), tune, SR)
        (clips / model / "plain.json").write_text(json.dumps({"prompt_id": "plain", "seed": 1, "melody": None}))
    out = tmp_path / "scored"
    proc = run_script("evaluate.py", "--score_only", "--input_dir", clips, "--output_dir", out)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == set(cases)  # refs/ is not a model
    rows = {(r["model"], r["prompt_id"]): r for r in
            (json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines())}
    cosine = {model: rows[(model, "tune")]["metrics"]["chroma_cosine"] for model in cases}
    print(f"chroma cosine to the tune: {cosine}")
    assert cosine["base_model"] == pytest.approx(1.0, abs=1e-3)
    assert cosine["best_model"] < 0.2 and cosine["final_model"] > 0.9
    assert rows[("best_model", "tune")]["flags"]["ignores_melody"] is True
    assert rows[("final_model", "tune")]["flags"]["ignores_melody"] is False
    assert "ignores_melody" not in rows[("base_model", "tune")]["flags"]
    for model in cases:
        assert "chroma_cosine" not in rows[(model, "plain")]["metrics"]
        assert "ignores_melody" not in rows[(model, "plain")]["flags"]
    assert summary["models"]["best_model"]["flag_counts"]["ignores_melody"] == 1
    clean = "0/2 fade out, 0/2 noisy, 0/2 silent, 0/2 clipping, 0/2 repetitive, 0/2 crackle"
    assert f"best_model: {clean}, 1/1 ignore the melody" in proc.stdout
    assert f"final_model: {clean}, 0/1 ignore the melody" in proc.stdout
    html = (out / "report.html").read_text()
    assert html.count('<tr class="melody">') == 1 and '<span class="flag">ignores_melody</span>' in html
