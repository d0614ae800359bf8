#!/usr/bin/env python
"""CPU threads for torch: 1 vs 2 vs the default policy, quiet and beside one busy process, for a LoRA
training step and for generation (tiny model and musicgen-small architecture) -- measured in one run.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/benchmark_threads.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.benchmark_threads import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
