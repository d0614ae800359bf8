"""Which floating-point precision a run uses, on which hardware, and why.

`--precision auto|fp32|fp16|bf16` (train_lora.py, inference_lora.py, evaluate.py; `--fp16`/`--bf16`
are kept as its short forms). What runs:

- CUDA: fp16 and bf16 as asked (bf16 needs a GPU that has it: Ampere or newer, else fp32 with a
  warning); auto is bf16 where the GPU has it, else fp16.
- CPU: bf16 where the CPU has bf16 instructions (x86 avx512_bf16 or amx_bf16, arm bf16), where it
  runs matmuls about twice as fast as fp32 (README "Speed: precision and threads" has the figures,
  `python -m benchmarks.train --size small` and `python -m benchmarks.generation --paths` measure
  them on yours). A CPU without them would emulate bf16, slower than fp32, so bf16 there is fp32
  with a warning; fp16 on a CPU is fp32 with a warning (no fast path).
  auto is bf16 where the CPU has it, else fp32.

The defaults: generation and evaluation use auto, since bf16 was shown equivalent for them: the
held-out loss within 0.5% of fp32 (0.01% measured) and the teacher-forcing = greedy agreement still
1.0 (tests/test_precision.py). Training uses fp32: a run's losses stay comparable with every earlier
run's. `--precision auto` or `--bf16` takes the speed-up, its validation curve tracking fp32's (a short tiny
run, tests/test_precision.py).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# CPU flags of native bf16 arithmetic: x86 (/proc/cpuinfo "flags") and arm64 ("Features").
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@lru_cache(maxsize=1)
def cpu_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (Linux /proc/cpuinfo; elsewhere: no)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(set(value.split()) & set(BF16_CPU_FLAGS))
    return False


def requested(precision: str | None, fp16: bool = False, bf16: bool = False, default: str = "auto") -> str:
    """The precision asked for: --fp16/--bf16 (the older short forms) or --precision, never both
    disagreeing; None: `default`."""
    from musicgen_lora.core.common import UserError

    if fp16 and bf16:
        raise UserError("--fp16 and --bf16 exclude each other; pick one")
    short = "fp16" if fp16 else "bf16" if bf16 else None
    if short and precision not in (None, short):
        raise UserError(f"--{short} and --precision {precision} disagree; pass one of them")
    chosen = short or precision or default
    if chosen not in PRECISIONS:
        raise UserError(f"--precision {chosen}: choose one of {', '.join(PRECISIONS)}")
    return chosen


def resolve(asked: str, device) -> tuple[str, str | None]:
    """(precision that runs: fp32, fp16 or bf16; a warning line when it is not what was asked)."""
    import torch

    kind = torch.device(device).type
    if asked == "fp32":
        return "fp32", None
    if kind == "cuda":
        has_bf16 = torch.cuda.is_bf16_supported()
        if asked == "auto":
            return ("bf16" if has_bf16 else "fp16"), None
        if asked == "bf16" and not has_bf16:
            return "fp32", "warning: this GPU has no bf16 (Ampere or newer has it); running in fp32 (--fp16 is fast)"
        return asked, None
    # CPU (and anything else): bf16 where the instructions exist, else fp32.
    if cpu_bf16() and asked in ("auto", "bf16"):
        return "bf16", None
    if asked == "auto":
        return "fp32", None
    if asked == "fp16":
        hint = " (--precision bf16 is fast on this CPU)" if cpu_bf16() else ""
        return "fp32", f"warning: --fp16 needs a GPU; running in fp32 on the CPU{hint}"
    return "fp32", ("warning: this CPU has no bf16 instructions (avx512_bf16, amx_bf16): bf16 would be emulated "
                    "and slower than fp32; running in fp32")


def dtype_of(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
