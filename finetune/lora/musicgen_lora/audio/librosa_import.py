"""librosa, imported so that two processes cannot poison numba's cache: the one way this toolkit
imports it (`librosa = load_librosa()`).

Why: librosa 0.11 compiles numba ufuncs (@guvectorize / @vectorize with signatures, cache=True) the
moment their modules load -- util.utils, core.audio, core.pitch and beat.
Each @guvectorize function is cached as two files written by separate renames, and each embeds
addresses from the process that compiled it. Two processes compiling into an empty cache at once can
leave a pair from different processes; every later process that calls the function then dies of
SIGSEGV, not just that run (numba/numba#10128, librosa/librosa#1998). A fresh install meets an empty
cache: CI's two test workers did, and so would two prepare_data.py runs. Measured here
(`python -m benchmarks.librosa_cache --trials 10`: 4 processes at once on an empty NUMBA_CACHE_DIR,
then a fifth, each estimating a tempo and a key and resampling): importing librosa plainly, a
process died of SIGSEGV in 4 of 10 trials (8 of 50 processes); through load_librosa, 0 of 50.

So the first import takes an exclusive flock beside the cache numba uses for librosa and loads those
modules while holding it: the first process compiles and writes the cache (about 20 s on a 2-core
CPU), the others wait, then read a complete cache (about 2 s). librosa.beat is not loaded: the tempo
comes from librosa.feature.tempo (audio/tempo_key.py), and beat's own compiled code costs another
1.7 s per process.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

# librosa's modules that compile numba ufuncs when loaded, minus librosa.beat (see above);
# tests/test_librosa_import.py checks no other loads. (core.convert's and core.notation's
# @vectorize is librosa's own wrapper of numpy.vectorize.)
EAGER_NUMBA_MODULES = ("librosa.util.utils", "librosa.core.audio", "librosa.core.pitch")
LOCK_NAME = ".musicgen_lora-numba.lock"


def numba_lock_path() -> Path:
    """The lock file beside the cache numba will use for librosa: NUMBA_CACHE_DIR when set, else
    librosa's own __pycache__ (numba caches in the source tree when it can write there), else the
    temp folder (numba then caches per user)."""
    override = os.environ.get("NUMBA_CACHE_DIR")
    if override:
        folder = Path(override)
    else:
        spec = importlib.util.find_spec("librosa")
        folder = Path(spec.origin).parent / "__pycache__" if spec and spec.origin else Path(tempfile.gettempdir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder / LOCK_NAME
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / LOCK_NAME


def load_librosa():
    """The librosa module, its numba code loaded (compiled, or read from the cache) under the lock."""
    if all(name in sys.modules for name in EAGER_NUMBA_MODULES):
        return sys.modules["librosa"]
    try:
        fd = os.open(numba_lock_path(), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        fd = None  # nowhere to lock (read-only everywhere): numba cannot write a cache either
    try:
        if fd is not None:
            with contextlib.suppress(OSError):  # ENOLCK (a filesystem without locks): load unguarded, as before
                fcntl.flock(fd, fcntl.LOCK_EX)  # released when closed, or when the process dies
        for name in EAGER_NUMBA_MODULES:
            importlib.import_module(name)
    finally:
        if fd is not None:
            os.close(fd)
    return sys.modules["librosa"]
