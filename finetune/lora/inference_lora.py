#!/usr/bin/env python
"""Generate music from text with MusicGen, optionally with a LoRA adapter on top.

`--help` lists the flags; the code is musicgen_lora/cli/inference.py.
"""
import sys

from musicgen_lora.cli.inference import main

if __name__ == "__main__":
    sys.exit(main())
