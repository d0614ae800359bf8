#!/usr/bin/env python
"""Compare training runs in one table, plot their validation curves, and review a run's logs.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/compare_runs.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.compare_runs import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
