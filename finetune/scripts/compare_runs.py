#!/usr/bin/env python
"""Compare training runs in one table, plot their validation curves, and review a run's logs.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/compare_runs.py.
"""
import sys

from musicgen_lora.cli.compare_runs import main

if __name__ == "__main__":
    sys.exit(main())
