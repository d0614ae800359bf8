"""Two processes (gloo on CPU, through torchrun) train like one process with the same global batch."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import musicgen_lora.training.checkpointing as ckpt
from musicgen_lora.training.metrics_log import read_metrics

from conftest import LORA, run_script


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with its own dropouts (decoder 0.1, T5 0.1) at zero: with --lora_dropout 0
    --text_dropout 0 the loss is then a deterministic function of the batch on any rank."""
    dst = tmp_path_factory.mktemp("models") / "tiny-no-dropout"
    shutil.copytree(tiny_model_dir, dst)
    cfg = json.loads((dst / "config.json").read_text())

    def zero(d):
        for k, v in d.items():
            if isinstance(v, dict):
                zero(v)
            elif "dropout" in k and isinstance(v, (int, float)):
                d[k] = 0.0

    zero(cfg)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


@pytest.mark.slow
def test_two_processes_match_one(no_dropout_model, example_data_dir, tmp_path):
    common = ["--model_path", no_dropout_model, "--data_dir", example_data_dir, "--num_epochs", 2,
              "--target_duration", 2, "--logging_steps", 1, "--save_steps", 2, "--no_progress", "--lora_dropout", 0,
              "--text_dropout", 0, "--learning_rate", 3e-3, "--warmup_steps", 1, "--batch_size", 2]
    one, two = tmp_path / "one", tmp_path / "two"
    # Global batch 4 both ways: 1 process x 2 micro-batches of 2, or 2 processes x 1 micro-batch of 2.
    run_script("train_lora.py", *common, "--gradient_accumulation_steps", 2, "--output_dir", one)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                           str(LORA / "train_lora.py"), *map(str, common), "--gradient_accumulation_steps", "1",
                           "--output_dir", str(two)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("step 1/4 epoch 1") == 1  # one process logs

    cfg = json.loads((two / "run_config.json").read_text())
    assert cfg["num_processes"] == 2 and cfg["global_batch_size"] == 4 and cfg["steps_per_epoch"] == 2
    ra, rb = (read_metrics(r / "logs" / "metrics.jsonl")[0] for r in (one, two))
    assert [(r["type"], r["step"]) for r in ra] == [(r["type"], r["step"]) for r in rb]  # one set, no duplicates
    for x, y in zip(ra, rb):
        for key in ("train_loss", "valid_loss", "learning_rate", "grad_norm"):
            if key in x:
                assert y[key] == pytest.approx(x[key], abs=1e-5), (x["step"], key)
    final = {r["step"]: r.get("valid_loss") for r in rb if r["type"] == "eval"}
    print("1 process vs 2 processes, valid loss by step:",
          {r["step"]: (round(r["valid_loss"], 6), round(final[r["step"]], 6)) for r in ra if r["type"] == "eval"})
    for name in ("final_model", "best_model", "checkpoints/checkpoint-4"):
        a, b = (load_file(str(run / name / "adapter_model.safetensors")) for run in (one, two))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, name
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert len(torch.load(two / "checkpoints" / "checkpoint-4" / ckpt.RNG_FILE, weights_only=True)) == 2
