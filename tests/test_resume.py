"""Training that survives: SIGKILL + resume equals an uninterrupted run; kills during saves; refusals."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import musicgen_lora.training.checkpointing as ckpt
from musicgen_lora.training.metrics_log import read_metrics

from conftest import LORA, busy, run_script

# Default flags (LoRA dropout 0.05, text dropout 0.1) so every RNG the loop draws from is exercised;
# 8 clips / batch 2 / accumulation 2 -> 2 optimizer steps per epoch, so checkpoint-3 sits mid-epoch.
RUN = ("--num_epochs", 4, "--batch_size", 2, "--gradient_accumulation_steps", 2, "--target_duration", 2,
       "--logging_steps", 1, "--save_steps", 3, "--no_progress")


def _args(model, data, out, *extra):
    return ["--model_path", model, "--data_dir", data, "--output_dir", out, *RUN, *extra]


def _records(run):
    return read_metrics(run / "logs" / "metrics.jsonl")[0]


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def _kill_after_checkpoint(cmd, run, step, sig=signal.SIGKILL, timeout=300, env=None):
    """Start a training run and send it `sig` once checkpoint-`step` exists and a later step is
    logged. Returns (exit code, stderr)."""
    env = dict(env or os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    metrics = run / "logs" / "metrics.jsonl"
    deadline = time.time() + timeout
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            while proc.poll() is None and time.time() < deadline:
                if (run / "checkpoints" / f"checkpoint-{step}" / ckpt.STATE_FILE).is_file() and metrics.is_file():
                    lines = [line for line in metrics.read_text().splitlines() if line.endswith("}")]
                    if any(json.loads(line)["step"] > step for line in lines):
                        proc.send_signal(sig)
                        break
                time.sleep(0.01)
        finally:
            if proc.poll() is None and time.time() >= deadline:
                proc.kill()
            proc.wait()
        err.seek(0)
        return proc.returncode, err.read()


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, example_data_dir, tmp_path_factory):
    full = tmp_path_factory.mktemp("resume") / "full"
    run_script("train_lora.py", *_args(tiny_model_dir, example_data_dir, full))
    return full


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_and_resumed_run_matches_uninterrupted_run(tiny_model_dir, example_data_dir, uninterrupted, tmp_path,
                                                          sig):
    full, killed = uninterrupted, tmp_path / "killed"
    cmd = [sys.executable, str(LORA / "train_lora.py"), *map(str, _args(tiny_model_dir, example_data_dir, killed))]
    code, err = _kill_after_checkpoint(cmd, killed, 3, sig)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # handled like Ctrl-C: one line saying how to go on, the shell's exit code, no traceback
        assert code == 128 + signal.SIGTERM and "Traceback" not in err, err[-2000:]
        (line,) = [x for x in err.splitlines() if x.startswith("interrupted")]
        assert line.startswith("interrupted (SIGTERM): continue with the same command plus "
                               "--resume_from_checkpoint latest (newest checkpoint: checkpoint-"), line
        assert not any(".tmp-" in p.name for p in killed.rglob("*"))  # no save left half-written
    assert not (killed / "final_model").exists()  # really stopped mid-run
    assert any(r["step"] > 3 for r in _records(killed))  # records past the checkpoint exist...
    resumed_at = ckpt.list_checkpoints(killed)[-1][0]

    proc = run_script("train_lora.py", *_args(tiny_model_dir, example_data_dir, killed),
                      "--resume_from_checkpoint", "latest")
    assert "resumed from" in proc.stderr and f"checkpoint-{resumed_at}" in proc.stderr
    if resumed_at == 3:
        assert "step 3/8, epoch 2, 2 batches of this epoch already seen" in proc.stderr

    a, b = _adapter(full / "final_model"), _adapter(killed / "final_model")
    assert a.keys() == b.keys()
    adapter_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    ra, rb = _records(full), _records(killed)
    # ...and were cut back on resume: same records, same order, no duplicates.
    assert [(r["type"], r["step"]) for r in ra] == [(r["type"], r["step"]) for r in rb]
    loss = lambda r: r.get("train_loss", r.get("valid_loss"))  # noqa: E731
    loss_diff = max(abs(loss(x) - loss(y)) for x, y in zip(ra, rb))
    print(f"resume equivalence: max |adapter diff| {adapter_diff:.3g}, max |logged loss diff| {loss_diff:.3g}")
    assert adapter_diff < 1e-6 and loss_diff < 1e-6
    # The run really moved the adapter (the comparison is not between two untouched inits).
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 0
    sa, sb = (json.loads((r / "logs" / "summary.json").read_text()) for r in (full, killed))
    assert sa["best_valid_loss"] == pytest.approx(sb["best_valid_loss"], abs=1e-6) and sa["steps"] == sb["steps"] == 8
    assert Path(sb["resumed_from"]).name == f"checkpoint-{resumed_at}"


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs: on 1 the load-aware default also took 1")
def test_resumed_under_another_load_matches_uninterrupted_run(tiny_model_dir, example_data_dir, tmp_path):
    """Issue 30: a resumed training could run at another thread count than the run it continues (the
    default followed the load). OMP_NUM_THREADS unset throughout: an uninterrupted run on a quiet
    machine; the same command killed after checkpoint-3 beside busy processes, then resumed quiet.
    Every part ran at the machine's usable CPUs (the control: the load-aware default took 1 beside the
    busy processes) and the adapters are bit-identical."""
    usable = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cmd = lambda out, *extra: [sys.executable, str(LORA / "train_lora.py"),  # noqa: E731
                               *map(str, _args(tiny_model_dir, example_data_dir, out, *extra))]
    config = lambda out: json.loads((out / "run_config.json").read_text())  # noqa: E731
    full, killed = tmp_path / "full", tmp_path / "killed"
    proc = subprocess.run(cmd(full), capture_output=True, text=True, env=dict(env, HF_HUB_OFFLINE="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with busy(usable):
        code, err = _kill_after_checkpoint(cmd(killed), killed, 3, env=env)
    assert code == -signal.SIGKILL, err[-3000:]
    assert config(killed)["threads"] == usable  # what the busy half ran at
    resumed_at = ckpt.list_checkpoints(killed)[-1][1]
    assert ckpt.read_trainer_state(resumed_at)["threads"] == usable
    proc = subprocess.run(cmd(killed, "--resume_from_checkpoint", "latest"), capture_output=True, text=True,
                          env=dict(env, HF_HUB_OFFLINE="1"), timeout=600)
    assert proc.returncode == 0 and "warning: the run recorded" not in proc.stderr, proc.stderr[-3000:]
    assert config(full)["threads"] == config(killed)["threads"] == usable
    a, b = _adapter(full / "final_model"), _adapter(killed / "final_model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 0  # the runs moved the adapter


KILL_DURING_SAVE = r"""
import os, signal, sys, torch
from accelerate import Accelerator
import musicgen_lora.training.checkpointing as ckpt
from musicgen_lora.model.checkpoint import load_model_and_processor
from musicgen_lora.model.lora import apply_lora
from pathlib import Path

out = Path(sys.argv[3])
model, _ = load_model_and_processor(sys.argv[2])
model = apply_lora(model, 4, 8, 0.0)
acc = Accelerator(cpu=True)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-2)
model, opt = acc.prepare(model, opt)
sched = torch.optim.lr_scheduler.LambdaLR(opt.optimizer, lambda s: 1.0)
for p in params:  # one real optimizer step so the optimizer has state to save
    p.grad = torch.ones_like(p)
opt.step(); sched.step()
state = {"step": 1, "metrics_offset": 0}
ckpt.save_checkpoint(out / "checkpoints" / "checkpoint-1", acc, model, opt, sched, state, {"note": 1})
with torch.no_grad():
    for p in params:
        p.add_(1.0)
real_save = torch.save
def dying_save(obj, f, *a, **k):  # the adapter and optimizer.pt are written, then the process dies
    real_save(obj, f, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
ckpt.save_checkpoint(out / "checkpoints" / f"checkpoint-{sys.argv[4]}", acc, model, opt, sched, state, {})
"""


@pytest.mark.slow
@pytest.mark.parametrize("second", ["2", "1"], ids=["new-checkpoint", "same-folder"])
def test_kill_during_save_leaves_previous_checkpoint_loadable(tiny_model_dir, tmp_path, second):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(LORA), str(tiny_model_dir), str(out), second],
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    folder = out / "checkpoints"
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers and all(".tmp-" in n for n in leftovers)  # the half-written save
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == ["checkpoint-1"]

    path = ckpt.resolve_resume_path(out, "latest")  # also sweeps the temp dir away
    assert path.name == "checkpoint-1" and not any(p.name.startswith(".") for p in folder.iterdir())
    from accelerate import Accelerator

    from musicgen_lora.model.checkpoint import load_model_and_processor
    from musicgen_lora.model.lora import apply_lora

    model, _ = load_model_and_processor(str(tiny_model_dir))
    model = apply_lora(model, 4, 8, 0.0)
    acc = Accelerator(cpu=True)
    params = [p for p in model.parameters() if p.requires_grad]
    model, opt = acc.prepare(model, torch.optim.AdamW(params, lr=1e-2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt.optimizer, lambda s: 1.0)
    state, mine = ckpt.load_checkpoint(path, acc, model, opt, sched)
    assert state["step"] == 1 and mine["note"] == 1 and sched.last_epoch == 1
    saved = _adapter(path)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    # The restored weights are the first save's (B moved from 0 to -lr by the one step), not the +1 ones.
    assert all(torch.allclose(p, torch.full_like(p, -1e-2), atol=1e-6) for p in lora_b)
    assert len(saved) == len(params)
    assert all(len(s) for s in opt.state_dict()["state"].values())


def test_interrupted_rename_is_recovered(tmp_path):
    """A kill between atomic_dir's two renames leaves `.best_model.old-PID` and no best_model; a kill
    inside it leaves `.NAME.tmp-PID-...`. Swept when their process is dead, never while it lives."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()  # a pid whose process has ended
    (tmp_path / f".best_model.old-{dead}-0a1b2c3d").mkdir()
    (tmp_path / f".best_model.old-{dead}-0a1b2c3d" / "adapter_config.json").write_text("{}")
    (tmp_path / f".final_model.tmp-{dead}-0a1b2c3d").mkdir()
    (tmp_path / f".final_model.tmp-{os.getpid()}-0a1b2c3d").mkdir()  # a live writer's: kept
    (tmp_path / ".notes.txt").write_text("a user's hidden file: not ours, kept")
    ckpt.recover_interrupted_saves(tmp_path)
    assert (tmp_path / "best_model" / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["best_model", f".final_model.tmp-{os.getpid()}-0a1b2c3d", ".notes.txt"])


def test_save_total_limit_keeps_newest(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
        (tmp_path / "checkpoints" / f"checkpoint-{step}" / ckpt.STATE_FILE).write_text("{}")
    (tmp_path / "best_model").mkdir()
    ckpt.rotate_checkpoints(tmp_path, 2)
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-8"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-6", "checkpoint-8"]
    assert (tmp_path / "best_model").is_dir()


def _one_line_error(proc):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


@pytest.mark.slow
def test_resume_refusals_and_overwrite(tiny_model_dir, example_data_dir, tmp_path):
    out = tmp_path / "run"
    # Nothing to resume from: a clear line, nothing created.
    err = _one_line_error(run_script("train_lora.py", *_args(tiny_model_dir, example_data_dir, out),
                                     "--resume_from_checkpoint", "latest", check=False))
    assert "no checkpoint to resume from" in err and not out.exists()

    run_script("train_lora.py", *_args(tiny_model_dir, example_data_dir, out, "--max_steps", 3))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    # A new run into it is refused, and nothing in it changes.
    err = _one_line_error(run_script("train_lora.py", *_args(tiny_model_dir, example_data_dir, out), check=False))
    # It finished: resuming would do nothing, so that is not suggested.
    assert str(out) in err and "it finished" in err and "--overwrite_output_dir" in err
    assert "--resume_from_checkpoint" not in err
    # A resume that changes the batch layout is refused too.
    err = _one_line_error(run_script("train_lora.py", *_args(tiny_model_dir, example_data_dir, out),
                                     "--resume_from_checkpoint", "latest", "--batch_size", 1, check=False))
    assert "batch_size: 2 -> 1" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    # --overwrite_output_dir replaces the old run: no stale checkpoint survives for `latest` to pick.
    run_script("train_lora.py", *_args(tiny_model_dir, example_data_dir, out, "--max_steps", 2, "--save_steps", 2,
                                       "--overwrite_output_dir"))
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]
    assert max(r["step"] for r in _records(out)) == 2


def test_recorded_threads_from_the_checkpoint_else_run_config(tmp_path):
    """A checkpoint records its threads; one written before that falls back on the run's
    run_config.json; neither (or a value that is not a count) gives None: the default stays."""
    point = tmp_path / "checkpoints" / "checkpoint-3"
    point.mkdir(parents=True)
    write = lambda path, data: path.write_text(json.dumps(data))  # noqa: E731
    write(point / ckpt.STATE_FILE, {"format_version": ckpt.FORMAT_VERSION, "threads": 2})
    write(tmp_path / "run_config.json", {"threads": 3})
    assert ckpt.recorded_threads(point, tmp_path) == 2
    write(point / ckpt.STATE_FILE, {"format_version": ckpt.FORMAT_VERSION})
    assert ckpt.recorded_threads(point, tmp_path) == 3
    write(tmp_path / "run_config.json", {"threads": "many"})
    assert ckpt.recorded_threads(point, tmp_path) is None
    (tmp_path / "run_config.json").unlink()
    assert ckpt.recorded_threads(point, tmp_path) is None
