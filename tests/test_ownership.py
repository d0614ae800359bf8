"""Nothing lost, nothing mis-credited: overwrites remove only what a script wrote, one writer per
folder, temp leftovers swept, modes that follow the umask, results tied to the run they came from."""
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from musicgen_lora.core.outputs import MANIFEST, lock_path

from conftest import LORA, ROOT, assert_one_line_error, run_script

FAST_TRAIN = ("--num_epochs", 1, "--batch_size", 4, "--gradient_accumulation_steps", 1, "--target_duration", 2,
              "--logging_steps", 1, "--save_steps", 1, "--no_progress")


def snapshot(folder: Path) -> dict:
    """Every file under `folder` (hidden ones too) -> sha256 of its bytes: byte-identical or not."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train(model, data, out, *extra, check=True, cwd=None):
    return run_script("train_lora.py", "--model_path", model, "--data_dir", data, "--output_dir", out, *FAST_TRAIN,
                      *extra, check=check, cwd=cwd)


def evaluate(model, run, out, *extra, check=True):
    return run_script("evaluate.py", "--base_model_path", model, "--lora_model_path", run, "--compare_multi",
                      "--test_prompts", "lo-fi hip hop beat", "--duration", 0.5, "--output_dir", out, "--no_progress",
                      *extra, check=check)


@pytest.fixture(scope="module")
def run_with_results(tiny_model_dir, example_data_dir, tmp_path_factory):
    """A finished run with an evaluation and generated clips inside it, as a user's run dir looks."""
    run = tmp_path_factory.mktemp("owned") / "run"
    train(tiny_model_dir, example_data_dir, run)
    evaluate(tiny_model_dir, run, run / "evaluation")
    run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--lora_model_path", run / "best_model",
               "--prompts", "trap beat", "--duration", 0.5, "--output_dir", run / "generated", "--no_progress")
    return run


@pytest.mark.slow
def test_evaluate_overwrite_never_deletes_a_training_run_or_foreign_files(tiny_model_dir, run_with_results, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_with_results, run)
    before = snapshot(run)
    # The run dir itself as an evaluation folder: refused even with --overwrite, nothing touched.
    proc = evaluate(tiny_model_dir, run, run, "--overwrite", check=False)
    assert_one_line_error(proc, str(run), "a training run", "never replaces")
    # An earlier evaluation with a file the user put there: --overwrite names it and keeps everything.
    (run / "evaluation" / "my_listening_notes.txt").write_text("final_model is better on prompt 3")
    before = snapshot(run)
    proc = evaluate(tiny_model_dir, run, run / "evaluation", check=False)
    assert_one_line_error(proc, "my_listening_notes.txt", "move those out")
    assert "--overwrite to replace" not in proc.stderr  # a suggestion that would fail is never made
    proc = evaluate(tiny_model_dir, run, run / "evaluation", "--overwrite", check=False)
    assert_one_line_error(proc, "my_listening_notes.txt")
    assert snapshot(run) == before
    # Only its own files: --overwrite replaces the evaluation, and the rest of the run is untouched.
    (run / "evaluation" / "my_listening_notes.txt").unlink()
    old_summary = (run / "evaluation" / "summary.json").read_text()
    evaluate(tiny_model_dir, run, run / "evaluation", "--overwrite", "--seed", 99)
    assert (run / "evaluation" / "summary.json").read_text() != old_summary
    after = snapshot(run)
    # ... except the adapters' model cards, which record the evaluation (model_card.py; their own tests)
    cards = {"best_model/README.md", "final_model/README.md"}
    assert {k: v for k, v in after.items() if not k.startswith("evaluation/") and k not in cards} == \
        {k: v for k, v in before.items() if not k.startswith("evaluation/") and k not in cards}
    assert all(after[c] != before[c] for c in cards)
    # A folder of someone else's files (no manifest) is never an evaluation folder.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "song.wav").write_bytes(b"RIFF....")
    proc = evaluate(tiny_model_dir, run, other, "--overwrite", check=False)
    assert_one_line_error(proc, str(other), "song.wav", "did not write")
    assert (other / "song.wav").read_bytes() == b"RIFF...."


@pytest.mark.slow
def test_train_overwrite_removes_the_old_runs_outputs_and_readers_ignore_stale_ones(tiny_model_dir, example_data_dir,
                                                                                  run_with_results, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_with_results, run)
    old_id = json.loads((run / "run_config.json").read_text())["run_id"]
    assert json.loads((run / "evaluation" / "summary.json").read_text())["models"]["best_model"]["run_id"] == old_id
    stale_eval = tmp_path / "stale_evaluation"
    shutil.copytree(run / "evaluation", stale_eval)
    # A foreign file in the run dir: --overwrite_output_dir refuses, naming it; nothing changes.
    (run / "notes.txt").write_text("keep me")
    before = snapshot(run)
    assert_one_line_error(train(tiny_model_dir, example_data_dir, run, "--overwrite_output_dir", check=False),
                          "notes.txt", "did not write")
    assert snapshot(run) == before
    (run / "notes.txt").unlink()

    train(tiny_model_dir, example_data_dir, run, "--overwrite_output_dir", "--max_steps", 1)
    assert not (run / "evaluation").exists() and not (run / "generated").exists()  # the old run's, removed
    new_id = json.loads((run / "run_config.json").read_text())["run_id"]
    assert new_id != old_id and json.loads((run / MANIFEST).read_text())["run_id"] == new_id
    assert json.loads((run / "best_model" / "training_info.json").read_text())["run_id"] == new_id
    # An evaluation of the old run copied back in is not credited to the new one.
    shutil.copytree(stale_eval, run / "evaluation")
    table = run_script("compare_runs.py", run, "--no_plot").stdout
    assert "holds no results of this run's adapters" in table and "best_model:" not in table
    review = run_script("compare_runs.py", "--review", run).stdout
    assert "evaluation best_model" not in review


def test_prepare_data_and_tiny_model_replace_only_their_own_files(tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    (data / "eval").mkdir(parents=True)
    (data / "eval" / "prompts.json").write_text('["my prompt"]')  # the user's file beside the data
    run_script("prepare_data.py", "--create_example", "--output_dir", data, "--num_examples", 4)
    assert (data / "eval" / "prompts.json").read_text() == '["my prompt"]'
    (data / "train" / "my_clip.wav").write_bytes(b"mine")  # a clip the user added by hand
    before = snapshot(data)
    proc = run_script("prepare_data.py", "--create_example", "--output_dir", data, "--num_examples", 4, "--overwrite",
                      check=False)
    assert_one_line_error(proc, "train/my_clip.wav", "not written by prepare_data.py")
    assert snapshot(data) == before
    (data / "train" / "my_clip.wav").unlink()
    run_script("prepare_data.py", "--create_example", "--output_dir", data, "--num_examples", 5, "--overwrite")
    assert (data / "eval" / "prompts.json").read_text() == '["my prompt"]'
    assert len(json.loads((data / "metadata.json").read_text())["train"]) == 4  # 5 clips, 1 valid
    # A metadata.json written by hand is never replaced.
    hand = tmp_path / "hand"
    hand.mkdir()
    (hand / "metadata.json").write_text('{"train": []}')
    proc = run_script("prepare_data.py", "--create_example", "--output_dir", hand, "--overwrite", check=False)
    assert_one_line_error(proc, "metadata.json", "not written by prepare_data.py")
    assert (hand / "metadata.json").read_text() == '{"train": []}'

    # make_tiny_model.py replaced its output folder silently; now only with --overwrite, only its own.
    model = tmp_path / "model"
    run_script("make_tiny_model.py", "--output_dir", model)
    assert_one_line_error(run_script("make_tiny_model.py", "--output_dir", model, check=False), "--overwrite")
    run_script("make_tiny_model.py", "--output_dir", model, "--overwrite")
    proc = run_script("make_tiny_model.py", "--output_dir", data, "--overwrite", check=False)
    assert_one_line_error(proc, str(data), "prepared data")
    assert (data / "eval" / "prompts.json").is_file()


def test_inference_replaces_its_own_clips_only(tiny_model_dir, tmp_path):
    out = tmp_path / "clips"
    out.mkdir()
    (out / "00_trap-beat.wav").write_bytes(b"the user's own recording")
    args = ("--base_model_path", tiny_model_dir, "--prompts", "trap beat", "lofi", "--duration", 0.3,
            "--output_dir", out, "--no_progress")
    proc = run_script("inference_lora.py", *args, "--overwrite", check=False)
    assert_one_line_error(proc, "00_trap-beat.wav", "not written by inference_lora.py")
    assert (out / "00_trap-beat.wav").read_bytes() == b"the user's own recording"
    assert not (out / "01_lofi.wav").exists()
    (out / "00_trap-beat.wav").rename(out / "keep.wav")
    run_script("inference_lora.py", *args)
    assert_one_line_error(run_script("inference_lora.py", *args, check=False), "already exists", "--overwrite")
    run_script("inference_lora.py", *args, "--overwrite")  # its own clips: replaced
    assert (out / "keep.wav").read_bytes() == b"the user's own recording"
    # A training run dir is not a clips folder.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / MANIFEST).write_text(json.dumps({"tool": "train_lora.py", "paths": ["best_model"]}))
    assert_one_line_error(run_script("inference_lora.py", *args[:-3], "--output_dir", run_dir, check=False),
                          "a training run")


def _wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.mark.slow
def test_second_trainer_into_the_same_run_dir_is_refused_and_a_dead_ones_lock_is_not(tiny_model_dir,
                                                                                   example_data_dir, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(LORA / "train_lora.py"), "--model_path", str(tiny_model_dir), "--data_dir",
           str(example_data_dir), "--output_dir", str(run), *map(str, FAST_TRAIN), "--num_epochs", "40"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: (run / "logs" / "metrics.jsonl").is_file(), first)
        second = train(tiny_model_dir, example_data_dir, run, "--overwrite_output_dir", check=False)
        assert_one_line_error(second, str(run), "in use by train_lora.py", f"pid {first.pid}")
        # The same folder through a symlink (the lock went beside the link: both trained, and the second's
        # --overwrite_output_dir deleted the first's outputs while it ran).
        (tmp_path / "link").symlink_to(run)
        third = train(tiny_model_dir, example_data_dir, tmp_path / "link", "--overwrite_output_dir", check=False)
        assert_one_line_error(third, "in use by train_lora.py", f"pid {first.pid}")
        first.send_signal(signal.SIGKILL)  # a killed holder: the kernel drops its lock
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    assert lock_path(run).exists()  # the killed run's lock file is still there ...
    train(tiny_model_dir, example_data_dir, run, "--overwrite_output_dir", "--max_steps", 1)  # ... and blocks nobody
    assert not lock_path(run).exists()


HOLD_LOCK = """
import sys, time
from pathlib import Path
from musicgen_lora.core.outputs import output_lock
with output_lock(Path(sys.argv[2]), "evaluate.py"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_second_evaluation_into_the_same_folder_is_refused(tiny_model_dir, run_with_results, tmp_path):
    out = tmp_path / "evaluation"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(LORA), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = evaluate(tiny_model_dir, run_with_results, out, check=False)
        assert_one_line_error(proc, str(out), "in use by evaluate.py", f"pid {holder.pid}")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    evaluate(tiny_model_dir, run_with_results, out)  # the holder is gone: free again


@pytest.mark.slow
def test_killed_evaluation_leaves_no_temp_folder_forever(tiny_model_dir, run_with_results, tmp_path):
    out = tmp_path / "evaluation"
    cmd = [sys.executable, str(LORA / "evaluate.py"), "--base_model_path", str(tiny_model_dir), "--lora_model_path",
           str(run_with_results), "--compare_multi", "--test_prompts_file",
           str(ROOT / "finetune" / "data" / "eval" / "evaluation_prompts_8.json"), "--duration", "3",
           "--output_dir", str(out), "--no_progress"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        temps = lambda: [p for p in tmp_path.iterdir() if p.name.startswith(".evaluation.tmp-")]  # noqa: E731
        assert _wait_for(lambda: any(any(t.rglob("*.wav")) for t in temps()), proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert temps() and not out.exists()
    evaluate(tiny_model_dir, run_with_results, out)
    assert not temps() and (out / "summary.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("mask", [0o002, 0o077], ids=["umask-002", "umask-077"])
def test_every_output_follows_the_umask(tiny_model_dir, example_data_dir, tmp_path, mask):
    """Files 0666 & ~umask, folders 0777 & ~umask, as plain writes give -- never 0600 from temp files."""
    old = os.umask(mask)  # children inherit it
    try:
        data = tmp_path / "data"
        run_script("prepare_data.py", "--create_example", "--output_dir", data, "--num_examples", 4)
        run = tmp_path / "run"
        train(tiny_model_dir, data, run, "--max_steps", 2, "--sample_every", 1, "--sample_duration", 0.3)
        evaluate(tiny_model_dir, run, run / "evaluation")
        run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--lora_model_path", run / "final_model",
                   "--merge", "--output_dir", tmp_path / "merged")
    finally:
        os.umask(old)
    checked = 0
    for root in (data, run, tmp_path / "merged"):
        for path in [root, *root.rglob("*")]:
            want = (0o777 if path.is_dir() else 0o666) & ~mask
            assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode), oct(want))
            checked += 1
    assert checked > 60 and (run / "best_model" / "adapter_model.safetensors").is_file()
    assert any((run / "evaluation").rglob("*.png")) and (run / "evaluation" / "report.html").is_file()


def test_quick_start_never_writes_into_a_users_data_folder(tmp_path):
    user = tmp_path / "my music"
    user.mkdir()
    (user / "song.wav").write_bytes(b"RIFF my song")
    before = snapshot(user)
    env = dict(os.environ, DATA_DIR=str(user), OUTPUT_DIR=str(tmp_path / "out"), MODEL_PATH=str(tmp_path / "none"))
    proc = subprocess.run(["bash", str(ROOT / "quick_start.sh")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc, f"{user}/metadata.json not found", "prepare_data.py --input_dir")
    assert snapshot(user) == before and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_config_paths_are_absolute_and_precision_is_what_ran(tiny_model_dir, example_data_dir, tmp_path):
    """Started from one folder with relative paths, read from another: the held-out numbers are found."""
    work = tmp_path / "work"
    (work / "lora").mkdir(parents=True)
    shutil.copytree(example_data_dir, work / "data")
    run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", "../data", "--output_dir", "../run",
               *FAST_TRAIN, "--max_steps", 1, "--fp16", cwd=work / "lora")
    cfg = json.loads((work / "run" / "run_config.json").read_text())
    assert cfg["data_dir"] == str(work / "data") and cfg["output_dir"] == str(work / "run")
    assert cfg["as_given"] == {"data_dir": "../data", "output_dir": "../run"}
    assert cfg["precision"] == "fp32" and cfg["fp16"] is False and cfg["requested_precision"] == "fp16"

    proc = evaluate(tiny_model_dir, work / "run", tmp_path / "eval")  # from the tests' folder, not work/lora
    assert "held-out loss and FAD on the run's validation set" in proc.stderr
    models = json.loads((tmp_path / "eval" / "summary.json").read_text())["models"]
    assert models["best_model"]["held_out_loss"] is not None

    # A run written before paths were absolute: recovered from where the run dir is now.
    cfg.update(data_dir="../data", output_dir="../run")
    (work / "run" / "run_config.json").write_text(json.dumps(cfg))
    assert "validation set: " + str(work / "data") in evaluate(tiny_model_dir, work / "run", tmp_path / "e2").stderr
    # A recorded folder that is gone is said, not skipped silently.
    shutil.move(work / "data", work / "moved")
    proc = evaluate(tiny_model_dir, work / "run", tmp_path / "e3")
    assert "is not there; pass --data_dir" in proc.stderr
    notes = json.loads((tmp_path / "e3" / "summary.json").read_text())["notes"]
    assert any("is not there" in n for n in notes)
    # The runs table: the effective precision, and one folder spelled two ways is not a difference.
    twin = tmp_path / "twin"
    shutil.copytree(work / "run", twin)
    twin_cfg = json.loads((twin / "run_config.json").read_text())
    twin_cfg.update(data_dir=str(work / "data"), output_dir=str(twin))
    (twin / "run_config.json").write_text(json.dumps(twin_cfg))
    table = run_script("compare_runs.py", work / "run", twin, "--no_plot").stdout
    header = table.splitlines()[0]
    assert "precision" in header and "data_dir" not in header and "| fp32 |" in table
