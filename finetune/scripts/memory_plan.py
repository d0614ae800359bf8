#!/usr/bin/env python
"""Which MusicGen fits your GPU, and with which train_lora.py settings (no weights loaded).

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/memory_plan.py.
"""
import sys

from musicgen_lora.cli.memory_plan import main

if __name__ == "__main__":
    sys.exit(main())
