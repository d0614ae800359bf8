#!/usr/bin/env python
"""Convert a PEFT adapter saved as adapter_model.bin (a pickle) to adapter_model.safetensors.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/convert_adapter.py.
"""
import sys

from musicgen_lora.cli.convert_adapter import main

if __name__ == "__main__":
    sys.exit(main())
