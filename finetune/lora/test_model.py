#!/usr/bin/env python
"""Smoke-check a model (and optionally an adapter) on your validation clips.

`--help` lists the flags; the code is musicgen_lora/cli/check_model.py.
"""
import sys

from musicgen_lora.cli.check_model import main

if __name__ == "__main__":
    sys.exit(main())
