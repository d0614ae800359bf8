"""Shared fixtures: a tiny offline MusicGen and the synthetic example set, built once per session."""
import contextlib
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LORA = ROOT / "finetune" / "lora"
SCRIPTS = ROOT / "finetune" / "scripts"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and on a busy shared CPU spinning OpenMP threads
# made one tiny generate call 100x slower (33 s vs 0.25 s). Set before torch is imported; PASSIVE
# as the scripts export it (core/threads.py), for the tests that run 2 threads in this process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Each script's main(): the thin files in finetune/lora/ and finetune/scripts/ only call these.
MAINS = {"train_lora.py": "train", "evaluate.py": "evaluate", "inference_lora.py": "inference",
         "prepare_data.py": "prepare", "test_dataset.py": "check_dataset", "test_model.py": "check_model",
         "compare_runs.py": "compare_runs", "convert_adapter.py": "convert_adapter",
         "make_test_signals.py": "make_test_signals", "make_tiny_model.py": "make_tiny_model",
         "memory_plan.py": "memory_plan"}


def script_path(script) -> Path:
    return Path(script) if Path(script).is_absolute() else (LORA / script if (LORA / script).exists()
                                                            else SCRIPTS / script)


def run_script(script, *args, check=True, timeout=600, cwd=None, env=None, subprocess=False, **popen):
    """Run one of the user-facing scripts with these flags; returns a CompletedProcess (returncode,
    stdout, stderr). In this process by default -- main(argv) with stdout and stderr captured, the
    working folder and environment as asked and restored -- which costs what the script does rather
    than ~10 s of importing torch, transformers and peft again. subprocess=True (or popen options)
    runs a real child process, for what only a process shows: signals, kills, resource limits, two
    processes at once, what --help imports."""
    if str(script).startswith("benchmarks."):  # the workshop: python -m benchmarks.NAME from the root
        module, argv0 = str(script), ["-m", str(script)]
    else:
        path = script_path(script)
        module = f"musicgen_lora.cli.{MAINS[path.name]}" if path.name in MAINS and path.parent in (LORA, SCRIPTS) \
            else None
        argv0 = [str(path)]
    if subprocess or popen or module is None:
        return _run_child(argv0, args, check, timeout, cwd or (ROOT if module and argv0[0] == "-m" else None), env,
                          popen)
    return _run_in_process(module, argv0, args, check, cwd, env)


def _run_child(argv0, args, check, timeout, cwd, env, popen):
    import subprocess as sp

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    proc = sp.run([sys.executable, *argv0, *map(str, args)], capture_output=True, text=True,
                  env=env, timeout=timeout, cwd=cwd, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv0[-1]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _run_in_process(module, argv0, args, check, cwd, env):
    import contextlib
    import importlib
    import io
    import logging
    import signal
    import subprocess as sp

    import torch

    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_threads, saved_term = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    package_log = logging.getLogger("musicgen_lora")
    saved_level = package_log.level
    old_argv = sys.argv
    try:
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = [argv0[-1], *map(str, args)]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's own exits (--help: 0)
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    finally:
        sys.argv = old_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
        signal.signal(signal.SIGTERM, saved_term)
        package_log.setLevel(saved_level)
    proc = sp.CompletedProcess([argv0[-1], *map(str, args)], code or 0, out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv0[-1]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@contextlib.contextmanager
def busy(n: int):
    """n other processes spinning in pure Python (n busy CPUs) while the block runs."""
    import subprocess as sp

    procs = [sp.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.3 if n else 0)  # running before the block starts
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


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
