"""Writing audio files: the one call every product path writes a WAV through (soundfile).

libsndfile reports a failed write -- a full disk among them -- as "System error." with no errno, and
soundfile raises that as LibsndfileError: a traceback that does not say the disk is full. A failed
write on a filesystem with (almost) no space left is turned into the OSError(ENOSPC) it is, naming the
file, so every script's one-line disk-full message (cli.runner, core.outputs.disk_full_reason) applies.
"""
from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import soundfile as sf

from musicgen_lora.core.outputs import free_mb

# Below this much free space a libsndfile "System error" on write is taken as the disk being full.
FULL_BELOW_MB = 1.0


def write_audio(path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16", format: str | None = None):  # noqa: A002
    """sf.write(path, audio, sample_rate, subtype) -- audio (samples,) or (samples, channels) -- with a
    full disk raised as OSError(ENOSPC, path)."""
    try:
        sf.write(str(path), audio, sample_rate, subtype=subtype, format=format)
    except sf.LibsndfileError as e:
        free = free_mb(Path(path).parent)
        if free is not None and free < FULL_BELOW_MB:
            raise OSError(errno.ENOSPC, f"no space left on device ({e})", str(path)) from None
        raise
