"""Processes starting together on an empty numba cache: librosa imported plainly vs through
musicgen_lora.audio.librosa_import (its numba code loaded under a file lock).

    python -m benchmarks.librosa_cache                 # 5 trials of each
    python -m benchmarks.librosa_cache --trials 10 --processes 6

Each trial: a new empty NUMBA_CACHE_DIR, --processes processes started at once, then one more after
they end (it reads what they left). Every process computes what the toolkit computes with librosa --
onset-strength tempo, CQT chroma, a soxr resample -- once importing librosa itself ("plain"), once
through the toolkit's functions ("lock"). Prints, per way, the trials with a failed process and the
failed processes (exit -11 is SIGSEGV: a poisoned cache), and the mean wall time of a trial.
"""
import os
import subprocess
import sys
import tempfile
import time

from musicgen_lora.cli.args import Parser, positive_int
from musicgen_lora.cli.runner import cli

WORK = """
import numpy as np
y = np.random.default_rng(0).standard_normal(32000 * 4).astype(np.float32)
"""
PLAIN = WORK + """
import librosa
env = librosa.onset.onset_strength(y=y, sr=32000, aggregate=np.median)
print(float(librosa.feature.tempo(onset_envelope=env, sr=32000)[0]),
      int(librosa.feature.chroma_cqt(y=y, sr=32000).sum(axis=1).argmax()),
      librosa.resample(y, orig_sr=32000, target_sr=44100, res_type="soxr_hq").shape)
"""
LOCK = WORK + """
from musicgen_lora.audio.reader import resample
from musicgen_lora.audio.tempo_key import estimate_tempo, key_scores
print(estimate_tempo(y, 32000), int(key_scores(y, 32000)[:12].argmax()), resample(y, 32000, 44100).shape)
"""


def trial(code: str, processes: int) -> tuple[list[int], float]:
    """Exit codes of `processes` started together on an empty cache, then of one more; wall seconds."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        start = time.perf_counter()
        together = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL) for _ in range(processes)]
        codes = [p.wait() for p in together]
        codes.append(subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL).returncode)
        return codes, time.perf_counter() - start


@cli
def main(argv=None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=positive_int, default=5, help="Trials of each way.")
    p.add_argument("--processes", type=positive_int, default=4, help="Processes started together in a trial.")
    args = p.parse_args(argv)
    for name, code in (("plain", PLAIN), ("lock", LOCK)):
        failed_trials = failed = 0
        seconds = []
        for _ in range(args.trials):
            codes, wall = trial(code, args.processes)
            bad = [c for c in codes if c != 0]
            failed += len(bad)
            failed_trials += bool(bad)
            seconds.append(wall)
            print(f"{name}: exit codes {codes}", flush=True)
        print(f"{name}: {failed_trials} of {args.trials} trials with a failed process; {failed} of "
              f"{args.trials * (args.processes + 1)} processes failed; {sum(seconds) / len(seconds):.1f} s a trial")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
