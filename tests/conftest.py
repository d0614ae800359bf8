"""Shared fixtures: a tiny offline MusicGen and the synthetic example set, built once per session."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LORA = ROOT / "finetune" / "lora"
SCRIPTS = ROOT / "finetune" / "scripts"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a busy shared CPU spinning OpenMP threads
# made one tiny generate call 100x slower (33 s vs 0.25 s). Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_script(script, *args, check=True, timeout=600, cwd=None, env=None, **popen):
    """Run one of the user-facing scripts the way a user does; returns CompletedProcess."""
    path = script if Path(script).is_absolute() else (LORA / script if (LORA / script).exists() else SCRIPTS / script)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny-musicgen"
    run_script(SCRIPTS / "make_tiny_model.py", "--output_dir", out, "--seed", 0)
    return out


@pytest.fixture(scope="session")
def tiny_stereo_model_dir(tmp_path_factory):
    """The musicgen-stereo layout: 8 codebooks, [L0, R0, L1, R1, ...], the mono codec per channel."""
    out = tmp_path_factory.mktemp("models") / "tiny-stereo"
    run_script(SCRIPTS / "make_tiny_model.py", "--output_dir", out, "--seed", 0, "--stereo")
    return out


@pytest.fixture(scope="session")
def tiny_melody_model_dir(tmp_path_factory):
    """The musicgen-melody layout: a decoder-only LM with a [chroma, text] prefix (no cross-attention)."""
    out = tmp_path_factory.mktemp("models") / "tiny-melody"
    run_script(SCRIPTS / "make_tiny_model.py", "--output_dir", out, "--seed", 0, "--melody")
    return out


@pytest.fixture(scope="session")
def tiny_stereo_melody_model_dir(tmp_path_factory):
    """The musicgen-stereo-melody layout: the melody prefix and 8 interleaved codebooks."""
    out = tmp_path_factory.mktemp("models") / "tiny-stereo-melody"
    run_script(SCRIPTS / "make_tiny_model.py", "--output_dir", out, "--seed", 0, "--melody", "--stereo")
    return out


@pytest.fixture(scope="session")
def example_data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "example"
    run_script("prepare_data.py", "--create_example", "--output_dir", out, "--num_examples", 10)
    return out


@pytest.fixture(scope="session")
def trained_run(tiny_model_dir, example_data_dir, tmp_path_factory):
    """One short real training run through the CLI, shared by tests that need adapters."""
    out = tmp_path_factory.mktemp("runs") / "run"
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", example_data_dir,
                      "--output_dir", out, "--num_epochs", 3, "--batch_size", 4, "--gradient_accumulation_steps", 1,
                      "--learning_rate", 3e-3, "--warmup_steps", 1, "--logging_steps", 1, "--save_steps", 2,
                      "--target_duration", 6, "--text_dropout", 0.0, "--no_progress")
    return out, proc.stdout + proc.stderr


def assert_one_line_error(proc, *needles):
    """A user mistake: exit 2, no traceback, exactly one `error:` line holding every needle."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    err = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1, proc.stderr
    for needle in needles:
        assert needle in err[0], err[0]
