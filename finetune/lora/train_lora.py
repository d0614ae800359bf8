#!/usr/bin/env python
"""Fine-tune MusicGen with LoRA on clips described in metadata.json.

`--help` lists the flags; the code is musicgen_lora/cli/train.py.
"""
import sys

from musicgen_lora.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
