#!/usr/bin/env python
"""Detection and false-positive figures of the clip flags `repetitive` and `crackle`.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/flag_figures.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.flag_figures import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
