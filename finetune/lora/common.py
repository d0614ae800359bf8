"""Small pieces every script shares: user-facing errors and the script wrapper, seeding, devices.

Writing files (atomic writes, ownership, locks, full disks) lives in outputs.py."""
import functools
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("musicgen_lora")


class UserError(Exception):
    """A problem the user can fix (bad path, corrupt file, bad flag). Printed as one line, exit 2."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a `kill`, a job scheduler, a container stop), handled exactly like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, _frame):
    raise Interrupted(signum)


def cli(main):
    """Run a script's main(): UserError -> one clear line on stderr and exit code 2, no traceback.

    Ctrl-C and SIGTERM end the same way: atomic writes in flight are rolled back by their own
    cleanup, one line says so (plus how to continue, when the script attached a `hint` to the
    exception), and the exit code is 128 + the signal number (130, 143), as a shell reports it.
    A write that failed because the disk is full is one line too, whichever library raised it.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        setup_logging()
        for stream in (sys.stdout, sys.stderr):  # file names that are not valid UTF-8 print, escaped
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            return main(argv) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", signal.SIGINT)
            hint = getattr(e, "hint", None)
            print(f"interrupted ({signal.Signals(signum).name})" + (f": {hint}" if hint else ""), file=sys.stderr)
            return 128 + signum
        except Exception as e:
            from outputs import disk_full_reason

            reason = disk_full_reason(e)
            if reason is None:
                raise
            where = getattr(e, "filename", None)
            print(f"error: {reason}" + (f" while writing {where}" if where else "") + "; free some space, then "
                  "run the same command again", file=sys.stderr)
            return 2

    return wrapper


def setup_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
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

    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: no CUDA device is visible; use --device cpu or auto")
    return requested


def uniform_loss(vocab_size: int) -> float:
    """Cross-entropy of a uniform guess over the codebook: the ceiling any sane model sits under."""
    return math.log(vocab_size)


def read_json(path: Path, what: str = "file"):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); fix the file") from None
