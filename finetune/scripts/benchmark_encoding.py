#!/usr/bin/env python
"""Benchmark: EnCodec encoding of clips one at a time vs batched, measured in one run.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/benchmark_encoding.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.benchmark_encoding import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
