"""librosa's numba code is compiled and cached under one lock (musicgen_lora/audio/librosa_import.py):
processes starting together on a fresh install must not poison numba's cache.

Without the lock the first test fails in some runs, not all (benchmarks.librosa_cache: a process died
of SIGSEGV in 4 of 10 trials; with the lock's flock taken out, this test failed 3 times in 4); the
second fails every time that code with eagerly compiled numba ufuncs is loaded outside the lock
(librosa.beat, for one).
"""
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from musicgen_lora.audio import librosa_import
from musicgen_lora.audio.reader import resample
from musicgen_lora.audio.tempo_key import estimate_key, estimate_tempo
from musicgen_lora.evaluation.figures import spectrogram_png

SNIPPET = """
import numpy as np
from musicgen_lora.audio.reader import resample
from musicgen_lora.audio.tempo_key import estimate_key, estimate_tempo
y = np.random.default_rng(0).standard_normal(32000 * 4).astype(np.float32)
print(estimate_tempo(y, 32000), estimate_key(y, 32000), resample(y, 32000, 44100).shape)
"""


def _numba_ufunc_modules() -> set[str]:
    """Loaded librosa modules holding numba ufuncs (compiled, or read from the cache, when they load)."""
    return {name for name, module in list(sys.modules.items())
            if name.startswith("librosa") and module is not None
            and any(type(v).__module__.startswith("numba.np.ufunc") for v in vars(module).values())}


@pytest.mark.slow
def test_processes_starting_together_on_an_empty_cache_all_finish(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    together = [subprocess.Popen([sys.executable, "-c", SNIPPET], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in together]
    after = subprocess.run([sys.executable, "-c", SNIPPET], env=env, text=True, capture_output=True, timeout=300)
    results.append((after.returncode, after.stdout, after.stderr))
    for rc, _out, err in results:
        assert rc == 0, f"exit {rc} (-11 is SIGSEGV: a poisoned numba cache)\n{err[-2000:]}"
    assert len({out for _, out, _ in results}) == 1, [out for _, out, _ in results]
    assert (tmp_path / "numba" / librosa_import.LOCK_NAME).exists()
    assert any((tmp_path / "numba").rglob("guf-*.nbi")), "the test's cache folder was not the one numba used"


def test_no_librosa_numba_code_loads_outside_the_lock(tmp_path):
    y = np.random.default_rng(1).standard_normal(32000 * 2).astype(np.float32)
    estimate_tempo(y, 32000)
    estimate_key(y, 32000)
    resample(y, 32000, 44100)
    spectrogram_png(y, 32000, tmp_path / "s.png")
    loaded = _numba_ufunc_modules()
    assert loaded <= set(librosa_import.EAGER_NUMBA_MODULES), loaded - set(librosa_import.EAGER_NUMBA_MODULES)
    # and the list names only modules that do compile numba ufuncs (all of them loaded by now)
    assert loaded == set(librosa_import.EAGER_NUMBA_MODULES)
    assert "librosa.beat" not in sys.modules


def test_the_lock_sits_beside_the_cache_numba_uses(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "cache"))
    assert librosa_import.numba_lock_path() == tmp_path / "cache" / librosa_import.LOCK_NAME
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    # Without it: the folder where numba really cached librosa's ufuncs (it loaded them in this process)
    lock = librosa_import.numba_lock_path()
    librosa_import.load_librosa()
    librosa_cache = Path(importlib.util.find_spec("librosa").origin).parent / "__pycache__"
    if os.access(librosa_cache, os.W_OK):
        # numba caches beside each source file, in the __pycache__ folders of librosa's tree
        assert lock.parent == librosa_cache and any(librosa_cache.parent.rglob("guf-utils._localmax-*.nbi"))
    else:
        assert lock.parent == Path(tempfile.gettempdir())
