"""Small pieces every script shares: user-facing errors, atomic writes, seeding, devices."""
import contextlib
import functools
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("musicgen_lora")


class UserError(Exception):
    """A problem the user can fix (bad path, corrupt file, bad flag). Printed as one line, exit 2."""


def cli(main):
    """Run a script's main(): UserError -> one clear line on stderr and exit code 2, no traceback."""

    @functools.wraps(main)
    def wrapper(argv=None):
        setup_logging()
        try:
            return main(argv) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper


def setup_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    # transformers/peft chatter ("pad_token_id must be within the vocabulary" for every MusicGen,
    # real ones too) hides what matters; keep their warnings and errors only.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported elsewhere
        pass
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


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temp dir beside `final`; on success it replaces `final` in one rename.

    A crash or kill inside the block leaves the previous `final` untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path, what: str = "file"):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); fix the file") from None
