"""A new user's first hour (issue 30, part 3), followed as the documents say: each surprise found there
is now either what the documents say or one line that says what to do."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from musicgen_lora.core.outputs import output_lock

from conftest import ROOT, assert_one_line_error, run_script

DOCS = ["README.md", "USAGE.md", "DATA_PREPARATION.md"]
FAST_TRAIN = ("--batch_size", 4, "--gradient_accumulation_steps", 1, "--target_duration", 2, "--logging_steps", 1,
              "--no_progress")


def bash_commands(text: str):
    """(offset, line) of every command line in the ```bash blocks of a document."""
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        offset = block.start(1)
        for line in block.group(1).splitlines(keepends=True):
            yield offset, line.strip()
            offset += len(line)


@pytest.mark.parametrize("doc", DOCS)
def test_every_bare_python_command_comes_after_the_activation_step(doc):
    """README and USAGE ran `python test_dataset.py ...` with nothing saying to activate .venv: a new
    user got `No module named 'torch'`."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    activation = text.find("source .venv/bin/activate")
    bare = [(at, line) for at, line in bash_commands(text) if re.match(r"(\S+=\S+ )*python3? ", line)]
    assert bare, doc  # the documents do use bare `python`
    early = [line for at, line in bare if activation < 0 or at < activation]
    assert not early, early


def test_the_activation_step_works_in_a_fresh_shell():
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}  # no venv, no PYTHONPATH
    proc = subprocess.run(["bash", "-c", "source .venv/bin/activate && cd finetune/lora && "
                                         "python test_dataset.py --help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


def test_max_steps_wins_over_the_default_epochs(tiny_model_dir, example_data_dir, tmp_path):
    """--max_steps 20 ran 3 steps with no word: the default --num_epochs 1 ended first."""
    run = tmp_path / "run"
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", example_data_dir,
                      "--output_dir", run, "--max_steps", 5, *FAST_TRAIN)
    summary = json.loads((run / "logs" / "summary.json").read_text())
    config = json.loads((run / "run_config.json").read_text())
    assert config["steps_per_epoch"] < 5 and summary["steps"] == 5, (config["steps_per_epoch"], summary["steps"])
    assert "--max_steps 5: 5 optimizer steps" in proc.stderr


def test_evaluating_a_run_that_is_still_training_is_refused(tiny_model_dir, trained_run, tmp_path):
    """evaluate.py scored a best_model/ that kept changing, and wrote that verdict into the card."""
    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    with output_lock(run, "train_lora.py"):  # what a live trainer holds
        proc = run_script("evaluate.py", "--model_path", tiny_model_dir, "--lora_model_path", run, "--compare_multi",
                          "--prompts", "x", "--duration", 0.3, "--output_dir", tmp_path / "eval", check=False)
    assert_one_line_error(proc, str(run), "still training", "cp -r")
    proc = run_script("evaluate.py", "--model_path", tiny_model_dir, "--lora_model_path", run, "--compare_multi",
                      "--prompts", "x", "--duration", 0.3, "--output_dir", tmp_path / "eval", "--no_progress")
    last = proc.stdout.strip().splitlines()[-1]  # the last line names the blind page as well as the report
    assert "listen.html" in last and "report.html" in last, last


def test_make_test_signals_checks_its_folder_before_the_work(tmp_path, monkeypatch):
    from musicgen_lora.evaluation import signals

    out = tmp_path / "signals"
    out.mkdir()
    (out / "mine.txt").write_text("a file of the user's")

    def no_work(*a, **k):
        raise AssertionError("the clips were made before the folder was checked")

    monkeypatch.setattr(signals, "signals", no_work)
    proc = run_script("make_test_signals.py", "--output_dir", out, check=False)
    assert_one_line_error(proc, str(out))


@pytest.mark.parametrize("flag,needle", [("--learning_rat", "unrecognized arguments: --learning_rat"),
                                         ("--model-path", "did you mean --model-path -> --model_path")])
def test_flag_prefixes_are_not_taken_and_near_misses_are_named(tmp_path, flag, needle):
    proc = run_script("train_lora.py", flag, "x", "--output_dir", tmp_path / "run", check=False)
    assert_one_line_error(proc, needle)


def test_a_folder_of_raw_audio_as_data_dir_gets_the_command_that_prepares_it(tiny_model_dir, tmp_path):
    from test_collection import _wav

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "song.wav").write_bytes(_wav(3.0, 220, 1))
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", raw, "--output_dir",
                      tmp_path / "run", check=False)
    assert_one_line_error(proc, "holds 1 audio files", f"prepare_data.py --input_dir {raw}", "raw_prepared")


def test_a_hub_id_offline_fails_in_seconds_with_the_way_out(example_data_dir, tmp_path):
    """Leaving out --model_path spent 42 s on hub retries before the error line."""
    proc = run_script("train_lora.py", "--data_dir", example_data_dir, "--output_dir", tmp_path / "run",
                      env={"HF_HUB_OFFLINE": "1"}, check=False)
    assert_one_line_error(proc, "--model_path facebook/musicgen-small", "not in the Hugging Face cache",
                          "finetune/models/tiny-musicgen")


def test_the_cards_snippet_names_the_base_model_wherever_training_ran(tiny_model_dir, example_data_dir, tmp_path):
    """The snippet used the base path as typed: relative to the folder train_lora.py ran in."""
    work = tmp_path / "work"
    work.mkdir()
    rel = os.path.relpath(tiny_model_dir, work)
    run_script("train_lora.py", "--model_path", rel, "--data_dir", example_data_dir, "--output_dir", tmp_path / "run",
               "--max_steps", 1, *FAST_TRAIN, cwd=work)
    card = (tmp_path / "run" / "best_model" / "README.md").read_text()
    assert f"--model_path {tiny_model_dir}" in card and f"from_pretrained('{tiny_model_dir}')" in card


@pytest.mark.slow
def test_quick_start_runs_again_after_a_blind_test_and_keeps_the_ratings(tmp_path):
    """The saved ratings made the run folder "hold files train_lora.py did not write"."""
    out = tmp_path / "qs"
    (out / "evaluation" / "ratings").mkdir(parents=True)
    (out / "evaluation" / "ratings" / "ana.json").write_text("{}")
    env = {**os.environ, "OUTPUT_DIR": str(out), "SKIP_EVAL": "1", "EPOCHS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "quick_start.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("qs.rated-")]
    assert len(kept) == 1 and (kept[0] / "evaluation" / "ratings" / "ana.json").read_text() == "{}"
    assert f"moved it to {kept[0]}" in proc.stdout and (out / "final_model").is_dir()


def test_default_folders_are_relative_to_the_scripts_folder_wherever_it_starts(monkeypatch, tmp_path):
    """From the repository root a run landed in ../output, outside the checkout."""
    from musicgen_lora.cli import train as train_cli
    from musicgen_lora.cli.args import settings_from
    from musicgen_lora.training.config import TrainConfig

    monkeypatch.chdir(tmp_path)  # any folder: the user's shell
    monkeypatch.setattr(sys, "argv", [str(ROOT / "finetune" / "lora" / "train_lora.py")])
    cfg = settings_from(TrainConfig, train_cli.build_parser().parse_args(["--data_dir", "../mine"]))
    assert cfg.output_dir == str(ROOT / "finetune" / "output")  # not given: beside finetune/lora, as documented
    assert cfg.data_dir == "../mine"  # given: as typed, relative to the working folder
    typed = settings_from(TrainConfig, train_cli.build_parser().parse_args(["--output_dir", "../output"]))
    assert typed.output_dir == "../output"  # the default's own spelling, typed: still the user's
    monkeypatch.setattr(sys, "argv", ["train-lora"])  # a console command: no scripts folder
    assert settings_from(TrainConfig, train_cli.build_parser().parse_args([])).output_dir == "../output"


def test_a_one_point_training_curve_is_visible(tmp_path):
    """training_curves.png of a short run drew one-point series as invisible lines."""
    import matplotlib.pyplot as plt
    import numpy as np

    from musicgen_lora.reporting.curves import training_curves_png

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"type": "train", "step": 1, "train_loss": 4.0, "learning_rate": 1e-4}) + "\n")
    png = training_curves_png(metrics, tmp_path / "curves.png")
    pixels = plt.imread(png)[..., :3]
    green = np.array([0x2C, 0xA0, 0x2C]) / 255  # tab:green: the learning rate, in a panel with no legend
    assert (np.abs(pixels - green).max(axis=-1) < 0.05).sum() > 5
