#!/usr/bin/env python
"""Compare the base model with LoRA adapters on a fixed prompt set, side by side.

`--help` lists the flags; the code is musicgen_lora/cli/evaluate.py.
"""
import sys

from musicgen_lora.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
