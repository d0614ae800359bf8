"""Divergence guard, early stopping, YAML config precedence, gradient checkpointing."""
import json

import pytest
import torch
from safetensors.torch import load_file

import musicgen_lora.training.checkpointing as ckpt
from musicgen_lora.common import UserError
from conftest import LORA, run_script

FAST = ("--batch_size", 4, "--gradient_accumulation_steps", 1, "--target_duration", 2, "--logging_steps", 1,
        "--no_progress")


def _train(model, data, out, *extra, check=True):
    return run_script("train_lora.py", "--model_path", model, "--data_dir", data, "--output_dir", out, *FAST, *extra,
                      check=check)


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_nonfinite_loss_is_skipped_and_logged(tiny_model_dir, example_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = _train(tiny_model_dir, example_data_dir, out, "--num_epochs", 2, "--save_steps", 1,
                  "--learning_rate", 1e-2, "--debug_inject_nan_at_step", 2)
    assert "step 2: non-finite loss; update skipped (1 in a row" in proc.stderr
    recs = ckpt.read_metrics(out / "logs" / "metrics.jsonl")
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


def test_consecutive_nonfinite_steps_stop_the_run(tiny_model_dir, example_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = _train(tiny_model_dir, example_data_dir, out, "--num_epochs", 3, "--save_steps", 2, "--eval_steps", 2,
                  "--debug_inject_nan_at_step", "3,4", "--max_nonfinite_steps", 2, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "training stopped at step 4: 2 non-finite" in err[0]
    assert "best_model" in err[0] and "checkpoint-2" in err[0]
    assert (out / "best_model" / "adapter_model.safetensors").is_file()
    assert [p.name for _, p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]  # the last good one, kept
    assert not (out / "final_model").exists()
    summary = json.loads((out / "logs" / "summary.json").read_text())
    assert summary["stopped_reason"] == "non-finite" and summary["steps"] == 4


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
    evals = [r for r in ckpt.read_metrics(out / "logs" / "metrics.jsonl") if r["type"] == "eval"]
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
    from musicgen_lora.data.dataset import Collator, MusicDataset, read_metadata
    from musicgen_lora.modeling import apply_lora, batch_loss, load_model_and_processor, model_info
    from musicgen_lora.training.runtime import enable_gradient_checkpointing

    def grads(checkpointing):
        torch.manual_seed(0)
        model, processor = load_model_and_processor(str(tiny_model_dir))
        model = apply_lora(model, 4, 8, 0.1)
        if checkpointing:
            enable_gradient_checkpointing(model)
        info = model_info(model)
        clips = read_metadata(example_data_dir)["train"][:2]
        batch = Collator(processor, 2 * info["sample_rate"])(
            [MusicDataset(clips, info["sample_rate"], 2.0, train=False)[i] for i in range(2)])
        # Inside the checkpointed layer: its attention runs again when the backward pass recomputes it.
        attention = model.get_base_model().decoder.model.decoder.layers[0].self_attn
        calls = []
        attention.register_forward_hook(lambda *a: calls.append(1))
        model.train()
        torch.manual_seed(1)
        loss, _ = batch_loss(model, batch)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(calls)

    loss0, g0, calls0 = grads(False)
    loss1, g1, calls1 = grads(True)
    assert calls0 == 1 and calls1 == 2  # the layer ran again in the backward pass
    assert abs(loss0 - loss1) < 1e-6
    assert g0.keys() == g1.keys() and all(torch.allclose(g0[k], g1[k], atol=1e-6) for k in g0)
    assert any(g.abs().max() > 0 for g in g1.values())
