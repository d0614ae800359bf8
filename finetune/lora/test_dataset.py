#!/usr/bin/env python
"""Smoke-check your data before training (a user tool, not a pytest test).

`--help` lists the flags; the code is musicgen_lora/cli/check_dataset.py.
"""
import sys

from musicgen_lora.cli.check_dataset import main

if __name__ == "__main__":
    sys.exit(main())
