#!/usr/bin/env python
"""Which MusicGen fits your GPU, and with which train_lora.py settings (no weights loaded).

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/memory_plan.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.memory_plan import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
