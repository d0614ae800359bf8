#!/usr/bin/env python
"""Build a MusicGen checkpoint offline, with random weights, that loads exactly like a real one.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/make_tiny_model.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.make_tiny_model import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
