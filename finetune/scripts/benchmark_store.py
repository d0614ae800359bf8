#!/usr/bin/env python
"""The code store at collection scale (300,000 clips) vs the per-clip code cache: opening time, peak RSS,
time per batch of windows, disk per hour of audio -- measured in one run.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/benchmark_store.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.benchmark_store import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
