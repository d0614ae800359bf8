"""Convert a PEFT adapter saved as adapter_model.bin (a pickle) to adapter_model.safetensors.

    python finetune/scripts/convert_adapter.py ../output_old/best_model

The toolkit loads adapter weights from safetensors only: unpickling a file can run code it holds.
This reads the .bin with torch.load(weights_only=True), which accepts tensors and plain
containers only and never runs code, and writes adapter_model.safetensors beside it (the .bin is
kept). A .bin that holds anything else is refused: re-save it from the code that trained it.
Only convert adapters you trust: their weights still decide what the model generates.
"""
import sys
from pathlib import Path

from musicgen_lora.cli.args import Parser
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError, log
from musicgen_lora.core.outputs import atomic_file


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("adapter_dir", help="The adapter folder holding adapter_config.json and adapter_model.bin.")
    p.add_argument("--overwrite", action="store_true",
                   help="Replace an adapter_model.safetensors that is already there.")
    args = p.parse_args(argv)
    import torch
    from safetensors.torch import save_file


    folder = Path(args.adapter_dir)
    source, target = folder / "adapter_model.bin", folder / "adapter_model.safetensors"
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{folder}: no adapter_config.json here; pass the adapter folder itself")
    if not source.is_file():
        raise UserError(f"{source}: not found; nothing to convert")
    if target.exists() and not args.overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{source}: holds more than plain tensors ({first}); it cannot be converted without running "
                        f"its code: re-save the adapter as safetensors from the code that trained it") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError(f"{source}: is not a mapping of names to tensors; re-save the adapter as safetensors from "
                        f"the code that trained it")
    with atomic_file(target) as tmp:
        # clone: tied tensors (one storage under two names) are refused by safetensors; each name gets
        # its own copy of the same values, which is what loading the .bin gave PEFT anyway.
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(tmp))
    log.info(f"wrote {target} ({len(state)} tensors); {source} is unchanged")


if __name__ == "__main__":
    sys.exit(main())
