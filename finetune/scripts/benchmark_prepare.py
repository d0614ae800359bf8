#!/usr/bin/env python
"""prepare_data.py --codes_only measured: disk per hour vs the WAV route, kill-and-resume, two processes.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/benchmark_prepare.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.benchmark_prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
