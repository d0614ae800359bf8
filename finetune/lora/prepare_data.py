#!/usr/bin/env python
"""Prepare training data: metadata.json plus train/ and valid/ audio, and (optionally) the code store.

`--help` lists the flags; the code is musicgen_lora/cli/prepare.py.
"""
import sys

from musicgen_lora.cli.prepare import main

if __name__ == "__main__":
    sys.exit(main())
