"""How training runs: accelerate (device, precision, accumulation, processes), trackers, sharded
validation, gradient checkpointing. Works unchanged under `accelerate launch` and `torchrun`."""
import importlib.util
import os
from pathlib import Path

import torch

from musicgen_lora.core.common import UserError, log, resolve_device
from musicgen_lora.model.checkpoint import unwrap_base


def make_accelerator(device: str, precision: str, gradient_accumulation_steps: int, report_to: str,
                     project_dir: Path):
    """The accelerate Accelerator for a run. `precision` is what was asked (auto, fp32, fp16, bf16);
    precision.resolve says what runs: bf16 autocast on a CPU with bf16 instructions too, fp32 with a
    warning where the hardware has no fast path (fp16 on a CPU; bf16 on an older GPU or CPU)."""
    from accelerate import Accelerator

    from musicgen_lora.core.precision import resolve

    device = resolve_device(device)
    ran, warning = resolve(precision, device)
    if warning:
        log.warning(warning.replace("running in", "training in"))
    mixed = "no" if ran == "fp32" else ran
    if report_to != "none" and importlib.util.find_spec(report_to) is None:
        raise UserError(f"--report_to {report_to} needs the {report_to} package: pip install {report_to} "
                        f"(or use --report_to none; logs/metrics.jsonl is always written)")
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # accelerate keeps one state per process; a second run in the same process (a notebook, the
        # tests) may ask for another precision, which accelerate refuses unless the state is new.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(True)
    from accelerate.utils import DataLoaderConfiguration

    # TF32 stays off: it would change fp32 results on Ampere+ GPUs -- the fp32 losses that are meant to be
    # comparable with earlier runs, and EnCodec's codes (kept in fp32; a near tie between codebook entries
    # would round the other way), which the code store does not key on.
    return Accelerator(mixed_precision=mixed, gradient_accumulation_steps=gradient_accumulation_steps,
                       cpu=device == "cpu", log_with=None if report_to == "none" else report_to,
                       project_dir=str(project_dir),
                       dataloader_config=DataLoaderConfiguration(non_blocking=str(device).startswith("cuda")))


def start_trackers(accelerator, config: dict, run_name: str):
    """Hand the run's settings to the trackers (they take scalars only)."""
    if not accelerator.log_with:
        return
    flat = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in config.items()}
    accelerator.init_trackers(run_name, config=flat)


def shard_for_rank(dataset, accelerator):
    """Each process validates a distinct, non-padded slice (the sums are reduced across ranks, so
    no clip is counted twice -- unlike a prepared loader, which pads the last batch with repeats)."""
    if accelerator.num_processes == 1:
        return dataset
    return torch.utils.data.Subset(dataset, range(accelerator.process_index, len(dataset), accelerator.num_processes))


def sum_across_ranks(accelerator):
    """A reduce function for evaluate_loss: NLL sums and token counts added over all processes."""
    if accelerator.num_processes == 1:
        return None
    return lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()


def mean_across_ranks(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor([value], device=accelerator.device), reduction="mean")[0])


def any_across_ranks(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum")[0] > 0)


def enable_gradient_checkpointing(model):
    """Recompute decoder activations in the backward pass instead of storing them.

    Non-reentrant checkpointing works with LoRA on frozen layers (the reentrant kind drops the
    gradient when no input requires grad) and keeps dropout identical in the recomputation.
    """
    base = unwrap_base(model)
    kwargs = {"use_reentrant": False}
    if hasattr(base.decoder, "activation_checkpointing_enable"):  # transformers >= 5.2x
        base.decoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.decoder.config.use_cache = False
