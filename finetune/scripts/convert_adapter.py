#!/usr/bin/env python
"""Convert a PEFT adapter saved as adapter_model.bin (a pickle) to adapter_model.safetensors.

`--help` lists the flags; the code is finetune/lora/musicgen_lora/cli/convert_adapter.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lora"))  # where the musicgen_lora package lives
from musicgen_lora.cli.convert_adapter import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
