"""Small pieces every module shares: the user-error type, logging, seeding, devices, JSON reading.

Writing files (atomic writes, ownership, locks, full disks) lives in outputs.py; the wrapper that
turns a UserError into one `error:` line lives in cli/runner.py."""
import json
import logging
import math
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np

from musicgen_lora.core.errors import UserError  # defined there (threads.py raises it); imported from here

log = logging.getLogger("musicgen_lora")


class CurrentStderrHandler(logging.StreamHandler):
    """Writes each message to whatever sys.stderr is at that moment (not the stream at set-up), so a
    script's main() run inside another program -- the tests call them in process -- prints where
    that program captures."""

    def __init__(self):
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup_logging():
    """The toolkit's messages, one per line on stderr; other libraries' messages as basicConfig shows
    them (only in a process of our own: a host program keeps its own logging)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        for handler in root.handlers:  # ours are printed once, by the package's own handler
            handler.addFilter(lambda record: not record.name.startswith(log.name))
    if not any(isinstance(h, CurrentStderrHandler) for h in log.handlers):
        log.addHandler(CurrentStderrHandler())
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    # transformers/peft chatter ("pad_token_id must be within the vocabulary" for every MusicGen,
    # real ones too) and weight-loading bars hide what matters; keep their warnings and errors only.
    # Set through the environment, read when transformers is imported: --help never imports it.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*weight_norm.*deprecated.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated.*")


def seed_everything(seed: int):
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(requested: str | None = None) -> str:
    """'auto' or None picks cuda when available; an unavailable device is a user error."""
    import torch

    from musicgen_lora.core.threads import ensure_torch_threads

    # Every script resolves its device right after importing torch: the moment to give torch the
    # decided --threads when OMP_NUM_THREADS could not (torch caps it at the physical cores).
    ensure_torch_threads()

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA device is visible; use --device cpu or auto")
    return requested


def uniform_loss(vocab_size: int) -> float:
    """Cross-entropy of a uniform guess over the codebook: the ceiling any sane model sits under."""
    return math.log(vocab_size)


def rss_mb(field: str = "VmRSS") -> float:
    """This process's memory in MB from /proc/self/status: VmRSS (now) or VmHWM (its peak).

    Why not getrusage's ru_maxrss for the peak: Linux carries the parent's peak into a child over
    fork+exec, so a script started by a 600 MB process reports >= 600 MB whatever it did itself.
    VmHWM belongs to the address space exec made. Off Linux: ru_maxrss (the best there is)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def total_ram_bytes() -> int | None:
    """This machine's RAM in bytes (None when the OS does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def peak_rss_mb() -> float:
    return rss_mb("VmHWM")


def parse_json(text):
    """json.loads for files and requests we did not write. A document nested thousands of levels deep
    makes Python's parser raise RecursionError, which no caller expects; it is a ValueError here,
    like any other JSON that cannot be read (json.JSONDecodeError is one too)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def read_json(path: Path, what: str = "file"):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return parse_json(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); fix the file") from None
