#!/usr/bin/env python
"""Write clips with known answers, to see what evaluate.py's flags catch.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/make_test_signals.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.make_test_signals import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
