"""Divergence guard, early stopping, YAML config precedence, gradient checkpointing."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import musicgen_lora.model.loss as model_loss
import musicgen_lora.training.checkpointing as ckpt
from musicgen_lora.core.common import UserError
from musicgen_lora.training.config import TrainConfig
from musicgen_lora.training.guards import EarlyStopping, NonFiniteGuard
from musicgen_lora.training.metrics_log import read_metrics
from musicgen_lora.training.state import TrainState

from conftest import LORA, run_script

FAST = ("--batch_size", 4, "--gradient_accumulation_steps", 1, "--target_duration", 2, "--logging_steps", 1,
        "--no_progress")

# train_lora.py's own main(), with training forwards made non-finite at the given optimizer steps
# (one forward per step with accumulation 1): a fault from outside, the real loop reacting to it.
NAN_AT_STEPS = """
import sys
import musicgen_lora.model.loss as model_loss
from musicgen_lora.cli.train import main

real, bad, calls = model_loss.forward_logits, {int(s) for s in sys.argv[1].split(",")}, [0]

def forward_logits(model, batch, labels, *args, **kwargs):
    logits = real(model, batch, labels, *args, **kwargs)
    if model.training:
        calls[0] += 1
        if calls[0] in bad:
            logits = logits * float("nan")
    return logits

model_loss.forward_logits = forward_logits
sys.exit(main(sys.argv[2:]))
"""


def _train(model, data, out, *extra, check=True, nan_at=None):
    if nan_at is None:
        return run_script("train_lora.py", "--model_path", model, "--data_dir", data, "--output_dir", out, *FAST,
                          *extra, check=check)
    args = ["--model_path", model, "--data_dir", data, "--output_dir", out, *FAST, *extra]
    proc = subprocess.run([sys.executable, "-c", NAN_AT_STEPS, str(nan_at), *map(str, args)], capture_output=True,
                          text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert not check or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_nonfinite_loss_is_skipped_and_logged(tiny_model_dir, example_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = _train(tiny_model_dir, example_data_dir, out, "--num_epochs", 2, "--save_steps", 1,
                  "--learning_rate", 1e-2, nan_at=2)
    assert "step 2: non-finite loss; update skipped (1 in a row" in proc.stderr
    recs = read_metrics(out / "logs" / "metrics.jsonl")[0]
    bad = [r for r in recs if r["type"] == "nonfinite"]
    assert [(r["step"], r["loss_finite"], r["consecutive"]) for r in bad] == [(2, False, 1)]
    train = {r["step"]: r for r in recs if r["type"] == "train"}
    assert train[2]["train_loss"] is None and train[2]["grad_norm"] is None  # nothing finite to average
    assert all(train[s]["train_loss"] is not None for s in (1, 3, 4))
    # Step 2 changed nothing; steps 1 and 3 did -- and the run went on to a finite final adapter.
    c1, c2, c3 = (_adapter(out / "checkpoints" / f"checkpoint-{s}") for s in (1, 2, 3))
    assert all(torch.equal(c1[k], c2[k]) for k in c1)
    assert any(not torch.equal(c2[k], c3[k]) for k in c2)
    final = _adapter(out / "final_model")
    assert all(torch.isfinite(v).all() for v in final.values())
    summary = json.loads((out / "logs" / "summary.json").read_text())
    assert summary["nonfinite_steps_skipped"] == 1 and summary["stopped_reason"] == "completed"


@pytest.mark.slow
def test_consecutive_nonfinite_steps_stop_the_run(tiny_model_dir, example_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = _train(tiny_model_dir, example_data_dir, out, "--num_epochs", 3, "--save_steps", 2, "--eval_steps", 2,
                  "--max_nonfinite_steps", 2, check=False, nan_at="3,4")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "training stopped at step 4: 2 non-finite" in err[0]
    assert "best_model" in err[0] and "checkpoint-2" in err[0]
    assert (out / "best_model" / "adapter_model.safetensors").is_file()
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]  # the last good one, kept
    assert not (out / "final_model").exists()
    summary = json.loads((out / "logs" / "summary.json").read_text())
    assert summary["stopped_reason"] == "non-finite" and summary["steps"] == 4


@pytest.fixture
def tiny_run(tiny_model_dir, example_data_dir, tmp_path):
    """A real training run set up in this process (tiny model, example data), at step 0."""
    from accelerate.state import AcceleratorState

    from musicgen_lora.training.runtime import make_accelerator
    from musicgen_lora.training.trainer import TrainHooks, setup, start

    cfg = TrainConfig(model_path=str(tiny_model_dir), data_dir=str(example_data_dir), output_dir=str(tmp_path / "run"),
                      batch_size=4, gradient_accumulation_steps=1, target_duration=2.0, learning_rate=1e-2,
                      no_progress=True, max_nonfinite_steps=2).check()
    run = setup(cfg, make_accelerator("cpu", "fp32", 1, "none", tmp_path / "run" / "logs"), TrainHooks())
    yield run, start(run)
    run.metrics.close()
    AcceleratorState._reset_state(True)


def test_a_step_with_a_nonfinite_loss_changes_nothing_and_is_counted(tiny_run, monkeypatch):
    """The guard as a unit of the step: a NaN loss -> no update, the streak counts, a record is
    written; the next finite step updates and resets the streak; enough in a row exhausts it."""
    from musicgen_lora.training.trainer import train_step

    run, state = tiny_run
    run.model.train()
    batches = (b for _ in range(4) for b in run.train_loader)  # 2 batches an epoch: several passes
    real = model_loss.forward_logits
    monkeypatch.setattr(model_loss, "forward_logits", lambda *a, **k: real(*a, **k) * float("nan"))
    before = [p.detach().clone() for p in run.params]
    assert train_step(run, state, next(batches)) is True
    assert state.step == 1 and state.guard.streak == 1 and state.guard.total == 1 and not state.guard.exhausted
    assert all(torch.equal(a, b) for a, b in zip(before, run.params))  # the update was skipped
    assert state.window.micro == 0  # a NaN loss is not averaged into the train record
    monkeypatch.setattr(model_loss, "forward_logits", real)
    assert train_step(run, state, next(batches)) is True
    assert state.guard.streak == 0 and any(not torch.equal(a, b) for a, b in zip(before, run.params))
    monkeypatch.setattr(model_loss, "forward_logits", lambda *a, **k: real(*a, **k) * float("inf"))
    for _ in range(2):
        train_step(run, state, next(batches))
    assert state.guard.exhausted and state.guard.total == 3
    run.metrics.file.flush()
    records, _ = read_metrics(run.metrics.path)
    assert [(r["step"], r["consecutive"]) for r in records if r["type"] == "nonfinite"] == [(1, 1), (3, 1), (4, 2)]


def test_train_state_round_trips_and_reads_checkpoints_written_before_it():
    """Everything resumable is one record: state_dict -> load_state_dict gives it back, and the
    trainer_state.json of a checkpoint written before TrainState existed (format 1) loads."""
    def fresh():
        return TrainState(guard=NonFiniteGuard(10), stopper=EarlyStopping(3), text_rng=torch.Generator().manual_seed(1))

    a = fresh()
    a.step, a.epoch, a.batches_in_epoch, a.base_loss, a.evals_done, a.stop_reason = 7, 2, 5, 6.9, 3, None
    a.best, a.last_eval, a.last_eval_step = {"loss": 6.5, "step": 6, "saved": True}, {"loss": 6.6}, 6
    a.guard.check(False, None)
    a.stopper.update(False)
    a.window.add(2.5, 100, 4)
    a.text_rng.manual_seed(123)
    a.epoch_start_data_rng = torch.Generator().manual_seed(5).get_state()
    shared, rank = json.loads(json.dumps(a.state_dict())), a.rank_state_dict()
    b = fresh()
    b.load_state_dict(shared, rank)
    assert b.state_dict() | {"elapsed_seconds": 0} == a.state_dict() | {"elapsed_seconds": 0}
    assert torch.equal(b.text_rng.get_state(), a.text_rng.get_state()) and b.window.loss == 2.5
    assert b.guard.streak == 1 and b.stopper.bad_evals == 1
    old = {"format_version": 1, "step": 3, "epoch": 2, "batches_in_epoch": 2, "total_steps": 8,
           "base_valid_loss": 6.95, "best": {"loss": 6.94, "step": 2, "saved": True}, "last_eval": {"loss": 6.94},
           "last_eval_step": 2, "stop_reason": None, "evals_without_improvement": 0,
           "nonfinite": {"streak": 0, "total": 0}, "evals_done": 1, "metrics_offset": 1234, "elapsed_seconds": 4.2,
           "run": {"batch_size": 2}, "run_id": "x"}
    c = fresh()
    c.load_state_dict(old, rank)
    assert (c.step, c.epoch, c.batches_in_epoch, c.best["loss"], c.evals_done) == (3, 2, 2, 6.94, 1)


def test_early_stopping_and_yaml_config(tiny_model_dir, example_data_dir, tmp_path):
    """learning_rate 0 from the YAML file: validation never improves after the first evaluation, so
    patience 2 stops after three; the command line overrides the file's eval_steps."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("learning_rate: 0.0\neval_steps: 5   # overridden below\nearly_stopping_patience: 2\n"
                   "lora_rank: 4\nwarmup_steps: 1\n")
    out = tmp_path / "run"
    proc = _train(tiny_model_dir, example_data_dir, out, "--config", cfg, "--num_epochs", 10, "--eval_steps", 1)
    assert "stopping early" in proc.stderr
    summary = json.loads((out / "logs" / "summary.json").read_text())
    assert summary["stopped_reason"] == "early_stopping" and summary["steps"] == 3 and summary["best_step"] == 1
    assert (out / "final_model" / "adapter_model.safetensors").is_file()
    evals = [r for r in read_metrics(out / "logs" / "metrics.jsonl")[0] if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [0, 1, 2, 3]
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["learning_rate"] == 0.0 and run_config["lora_rank"] == 4  # from the file
    assert run_config["eval_steps"] == 1 and run_config["batch_size"] == 4  # command line wins
    assert run_config["config"] == str(cfg) and run_config["config_keys"] == sorted(
        ["learning_rate", "eval_steps", "early_stopping_patience", "lora_rank", "warmup_steps"])


def test_config_precedence_and_errors(tmp_path):
    from musicgen_lora.cli.args import parse_args_with_config
    from musicgen_lora.cli.train import build_parser

    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 1e-4\nbatch_size: 3\nfp16: true\nreport_to: tensorboard\n")
    args = parse_args_with_config(build_parser(), ["--config", str(cfg), "--batch_size", "5"])
    assert args.learning_rate == 1e-4 and isinstance(args.learning_rate, float)  # YAML's '1e-4' string, typed
    assert args.batch_size == 5 and args.fp16 is True and args.report_to == "tensorboard"
    assert args.lora_rank == 12  # parser default where neither says anything
    assert parse_args_with_config(build_parser(), []).batch_size == 2

    # On/off switches the file turns on can be turned off again on the command line, and vice versa.
    cfg.write_text("gradient_checkpointing: true\nno_cache: true\nbf16: false\n")
    on = parse_args_with_config(build_parser(), ["--config", str(cfg)])
    assert on.gradient_checkpointing is True and on.no_cache is True and on.bf16 is False
    off = parse_args_with_config(build_parser(), ["--config", str(cfg), "--no_gradient_checkpointing", "--cache",
                                                  "--bf16"])
    assert off.gradient_checkpointing is False and off.no_cache is False and off.bf16 is True
    plain = parse_args_with_config(build_parser(), ["--no_fp16"])
    assert plain.fp16 is False and plain.no_cache is False and plain.gradient_checkpointing is False

    for text, needles in [("learnig_rate: 1.0e-4\n", ["unknown key 'learnig_rate'", str(cfg)]),
                          ("batch_size: two\n", ["batch_size", "'two'"]),
                          ("fp16: 1\n", ["fp16", "true or false"]),
                          ("report_to: mlflow\n", ["report_to", "mlflow"]),
                          ("- a\n- b\n", ["mapping"])]:
        cfg.write_text(text)
        with pytest.raises(UserError) as e:
            parse_args_with_config(build_parser(), ["--config", str(cfg)])
        assert all(n in str(e.value) for n in needles), str(e.value)


def test_unknown_config_key_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_sise: 4\n")
    proc = run_script("train_lora.py", "--config", cfg, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {cfg}: unknown key 'batch_sise'" in proc.stderr


def test_shipped_config_is_valid_and_matches_flag_defaults():
    from musicgen_lora.cli.args import load_config_file
    from musicgen_lora.cli.train import build_parser

    parser = build_parser()
    values = load_config_file(LORA / "config.yaml", parser)
    assert len(values) > 20
    defaults = {a.dest: a.default for a in parser._actions}
    assert {k: v for k, v in values.items() if v != defaults[k]} == {}


def test_gradient_checkpointing_recomputes_and_keeps_gradients(tiny_model_dir, example_data_dir):
    from musicgen_lora.data.dataset import Collator, MusicDataset
    from musicgen_lora.data.metadata import read_metadata
    from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
    from musicgen_lora.model.lora import apply_lora
    from musicgen_lora.model.loss import batch_loss
    from musicgen_lora.training.runtime import enable_gradient_checkpointing

    def grads(checkpointing):
        torch.manual_seed(0)
        model, processor = load_model_and_processor(str(tiny_model_dir))
        model = apply_lora(model, 4, 8, 0.1)
        if checkpointing:
            enable_gradient_checkpointing(model)
        info = model_info(model)
        clips = read_metadata(example_data_dir)["train"][:2]
        batch = Collator(processor, 2 * info["sample_rate"], info["hop_length"])(
            [MusicDataset(clips, info["sample_rate"], 2.0, train=False, hop_length=info["hop_length"],
                          audio_channels=1)[i]
             for i in range(2)])
        # Inside the checkpointed layer: its attention runs again when the backward pass recomputes it.
        attention = model.get_base_model().decoder.model.decoder.layers[0].self_attn
        calls = []
        attention.register_forward_hook(lambda *a: calls.append(1))
        model.train()
        torch.manual_seed(1)
        loss, _ = batch_loss(model, batch)
        loss.backward()
        by_name = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return float(loss.detach()), by_name, len(calls)

    loss0, g0, calls0 = grads(False)
    loss1, g1, calls1 = grads(True)
    assert calls0 == 1 and calls1 == 2  # the layer ran again in the backward pass
    assert abs(loss0 - loss1) < 1e-6
    assert g0.keys() == g1.keys() and all(torch.allclose(g0[k], g1[k], atol=1e-6) for k in g0)
    assert any(g.abs().max() > 0 for g in g1.values())
