#!/usr/bin/env python
"""Build a MusicGen checkpoint offline, with random weights, that loads exactly like a real one.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/make_tiny_model.py.
"""
import sys

from musicgen_lora.cli.make_tiny_model import main

if __name__ == "__main__":
    sys.exit(main())
