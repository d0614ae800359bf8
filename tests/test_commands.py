"""Every command the docs show starts, from the folder the docs run it in: `--help` of each user
script and tool, as `cd finetune/lora && python train_lora.py ...`, as `python finetune/lora/...` from
the repository root, the workshop's `python -m benchmarks.NAME` from the root, and under `torchrun`
and `accelerate launch`. Guards the layout: a script that no longer finds its modules fails here
first. (Real processes: where a command starts from is what is tested.)"""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

LORA_DIR = ROOT / "finetune" / "lora"
USER_SCRIPTS = ["train_lora.py", "evaluate.py", "inference_lora.py", "prepare_data.py", "test_dataset.py",
                "test_model.py"]
TOOLS = ["compare_runs.py", "make_tiny_model.py", "make_test_signals.py", "convert_adapter.py", "memory_plan.py"]
# The workshop: run from the repository root as `python -m benchmarks.NAME` (not installed with the package).
BENCHMARKS = ["train", "generation", "memory", "limits", "melody", "store", "prepare", "encoding", "threads",
              "flag_figures", "import_graph", "gpu_check", "real_music", "tempo_key"]

COMMANDS = ([(LORA_DIR, [name]) for name in USER_SCRIPTS] +                          # cd finetune/lora
            [(ROOT, [f"finetune/lora/{name}"]) for name in USER_SCRIPTS] +           # from the repository root
            [(ROOT, [f"finetune/scripts/{name}"]) for name in TOOLS] +
            [(LORA_DIR, [f"../scripts/{name}"]) for name in ("compare_runs.py", "memory_plan.py")] +
            [(ROOT, ["-m", f"benchmarks.{name}"]) for name in BENCHMARKS] +
            [(ROOT, ["-m", f"musicgen_lora.cli.{name}"]) for name in ("convert_adapter", "train")] +
            [(LORA_DIR, ["-m", "torch.distributed.run", "--nproc_per_node", "1", "train_lora.py"]),
             (LORA_DIR, ["-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "train_lora.py"])])


@pytest.mark.slow
@pytest.mark.parametrize("cwd,argv", COMMANDS, ids=[" ".join(a) for _, a in COMMANDS])
def test_documented_command_starts_from_its_folder(cwd, argv):
    # A clean environment: nothing on PYTHONPATH, so only the layout can make the imports work.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, *argv, "--help"], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and "Traceback" not in proc.stderr
