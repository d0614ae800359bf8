#!/usr/bin/env python
"""Write clips with known answers, to see what evaluate.py's flags catch.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/make_test_signals.py.
"""
import sys

from musicgen_lora.cli.make_test_signals import main

if __name__ == "__main__":
    sys.exit(main())
