"""Detection and false-positive figures of the clip flags: `repetitive` and `crackle` on constructed
families, and every fault flag on real rendered music with failures injected early or late.

    python -m benchmarks.flag_figures [--variants 8] [--seconds 15] [--seed 0] [--real DIR | --no_real]

Builds --variants randomized clips of every family in this module (clean
music with strong beats, a played drum loop, the older failure signals mono and stereo, loops of
0.5-4 s from the start or from 3-9 s, near-verbatim loops, 20-200 clicks at random or after every
attack), scores each with evaluate.py's score_clip and prints, per flag, the detection rate on the
clips that must raise it, the false-positive rate on all the others, the lowest positive and highest
negative score, per-family counts, and the time per clip. About 0.15 s per clip on one core.

Then, on the real set (--real, default tests/data/real_music: benchmarks/real_music.py's renders of
piano with rests, organ, strings, guitar, harpsichord, a GM drum kit, a dense ensemble): every clip
clean (any fault flag is a false positive), and each failure in REAL_FAILURES injected at an early
(3 s of 15) and a late (9 s) onset: the share that raises the flag it should, per failure x onset
(and the pieces missed), and how far the recorded onset (noisy_from_s, ...) is from the injected one.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicgen_lora.core.common import UserError
from musicgen_lora.evaluation import metrics
from musicgen_lora.evaluation.flags import FLAGS
from musicgen_lora.evaluation.signals import (
    SR,
    after_attacks,
    chord_with_beat,
    clipped,
    drum_loop,
    fade,
    invert_right,
    looped,
    random_times,
    silent_tail,
    stereo_chord,
    to_stereo,
    varied_beat,
    white_noise,
    with_clicks,
)

CODEC_FRAME_S = 0.02  # EnCodec 32 kHz: 50 frames per second

# The flags these figures judge, with the metric each is a threshold on and that threshold.
JUDGED = {"repetitive": ("repetition", metrics.REPETITIVE_SHARE),
          "crackle": ("clicks_per_s", metrics.CRACKLE_CLICKS_PER_S)}


@dataclass(frozen=True)
class Family:
    name: str
    expect: frozenset                                    # every flag each of its clips must raise, no more
    make: Callable[[np.random.Generator, float], tuple]  # (rng, seconds) -> (audio, a few words on its draw)


# Sources: (rng, seconds) -> (audio, a few words on the draw, seconds between attacks: kick or snare).

def _beat(rng, seconds, **kw):
    bpm, key = float(rng.uniform(80, 140)), int(rng.integers(0, 12))
    return varied_beat(seconds, SR, bpm=bpm, key=key, seed=int(rng.integers(1 << 30)), **kw), f"{bpm:.0f} bpm", 60 / bpm


def _drums(rng, seconds):
    bpm = float(rng.uniform(70, 150))
    x = drum_loop(seconds, SR, bpm=bpm, seed=int(rng.integers(1 << 30)), timing_ms=float(rng.uniform(2, 6)),
                  level_db=float(rng.uniform(1, 4)))
    return x, f"{bpm:.0f} bpm", 60 / bpm


def _chord(rng, seconds):
    root = float(rng.uniform(150, 300))
    return chord_with_beat(seconds, SR, root), f"root {root:.0f} Hz", 0.5  # its kick every half second


def _loop(source, start, near=False):
    """A family maker: `source`'s clip looped from `start(rng, seconds)` on, with a period of 0.5-4 s;
    near: plus noise 30 dB under the music and a +-1 dB level step per repeat (a decoder's loop is not
    bit-exact)."""
    def make(rng, seconds):
        x, words, _ = source(rng, seconds)
        t0 = float(start(rng, seconds))
        # At most to 70% of the clip before the first repeat: the loop then fills more than half of
        # the second half, which is what the flag asks (a loop first heard again in the last quarter
        # is judged in the next window of a longer clip, not in this one).
        period = float(rng.uniform(metrics.LOOP_LAGS_S[0], min(metrics.LOOP_LAGS_S[1], 0.7 * seconds - t0)))
        period = round(period / CODEC_FRAME_S) * CODEC_FRAME_S  # a loop of codes repeats whole codec frames
        y = looped(x, t0, period, SR)
        if near:
            a, p = int(t0 * SR), int(period * SR)
            steps = np.repeat(10 ** (rng.uniform(-1, 1, len(y) // p + 2) / 20), p)[:len(y) - a]
            y[a:] *= steps.astype(np.float32)
            rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
            y = y + (10 ** (-30 / 20) * rms * rng.standard_normal(len(y))).astype(np.float32)
        return y, f"{words}, {period:.2f} s loop from {t0:.1f} s"
    return make


def _clicks(source, attacks=False):
    """A family maker: `source`'s clip with 20-200 clicks per 15 s at random times (attacks: 1-3 after
    every attack, a kick or a snare), peaks 0.05-0.3."""
    def make(rng, seconds):
        x, words, beat = source(rng, seconds)
        level = float(rng.uniform(0.05, 0.3))
        if attacks:
            times = after_attacks(np.arange(0, seconds, beat), seconds, seed=int(rng.integers(1 << 30)),
                                  per_attack=int(rng.integers(1, 4)))
        else:
            times = random_times(int(rng.uniform(20, 200) * seconds / 15), seconds, seed=int(rng.integers(1 << 30)))
        return (with_clicks(x, times, level, SR, seed=int(rng.integers(1 << 30))),
                f"{words}, {len(times)} clicks at {level:.2f}")
    return make


def _stereo_clicks(rng, seconds):
    """Clicks in the left channel only of a stereo chord (heard on headphones; half as loud in the mid)."""
    x = stereo_chord(seconds, SR, float(rng.uniform(150, 300)))
    level = float(rng.uniform(0.1, 0.3))
    times = random_times(int(rng.uniform(20, 200) * seconds / 15), seconds, seed=int(rng.integers(1 << 30)))
    x[:, 0] = with_clicks(x[:, 0], times, level, SR, seed=int(rng.integers(1 << 30)))
    return x, f"{len(times)} clicks at {level:.2f} in L"


def families() -> list[Family]:
    """The clips judged: clean music with strong beats, the existing failure signals (they must raise
    what they always raised, and neither new flag), and the two failures in their variants."""
    none, rep, crk = frozenset(), frozenset({"repetitive"}), frozenset({"crackle"})
    return [
        Family("varied beat (chords, melody, drums)", none, lambda r, s: _beat(r, s)[:2]),
        Family("varied beat, no melody", none, lambda r, s: _beat(r, s, melody=False)[:2]),
        Family("varied beat, no drums", none, lambda r, s: _beat(r, s, drums=False)[:2]),
        Family("drum loop (played)", none, lambda r, s: _drums(r, s)[:2]),
        Family("steady chord + kick", none, lambda r, s: _chord(r, s)[:2]),
        Family("stereo chord", none, lambda r, s: (stereo_chord(s, SR, float(r.uniform(150, 300))), "")),
        Family("fading 25-35 dB", frozenset({"fades_out"}),
               lambda r, s: (fade(_chord(r, s)[0], float(r.uniform(25, 35)), SR), "")),
        Family("white noise", frozenset({"noisy"}),
               lambda r, s: (white_noise(s, SR, seed=int(r.integers(1 << 30)), rms=float(r.uniform(0.05, 0.2))), "")),
        Family("silent tail", frozenset({"fades_out", "silent"}),
               lambda r, s: (silent_tail(_chord(r, s)[0], s * float(r.uniform(0.45, 0.6)), SR), "")),
        Family("clipped", frozenset({"clipping"}), lambda r, s: (clipped(_chord(r, s)[0], float(r.uniform(3, 6))), "")),
        Family("collapsed (L = R)", frozenset({"collapsed_to_mono"}), lambda r, s: (to_stereo(_chord(r, s)[0]), "")),
        Family("phase inverted", frozenset({"phase_inverted"}),
               lambda r, s: (invert_right(stereo_chord(s, SR, float(r.uniform(150, 300)))), "")),
        Family("loop from 3-9 s (of 15)", rep, _loop(_beat, lambda r, s: r.uniform(0.2, 0.6) * s)),
        Family("loop from the start", rep, _loop(_beat, lambda r, s: r.uniform(0, 1))),
        Family("near-verbatim loop from 3-9 s", rep, _loop(_beat, lambda r, s: r.uniform(0.2, 0.6) * s, near=True)),
        Family("drum loop stuck from 3-9 s", rep, _loop(_drums, lambda r, s: r.uniform(0.2, 0.6) * s)),
        Family("clicks on the chord", crk, _clicks(_chord)),
        Family("clicks on a varied beat", crk, _clicks(_beat)),
        Family("clicks on a drum loop", crk, _clicks(_drums)),
        Family("clicks after every kick (chord)", crk, _clicks(_chord, attacks=True)),
        Family("clicks after every beat (varied beat)", crk, _clicks(_beat, attacks=True)),
        Family("clicks in one channel (stereo)", crk, _stereo_clicks),
    ]


@dataclass
class Scored:
    family: str
    expect: frozenset
    raised: frozenset
    scores: dict       # {judged flag: its metric}
    words: str
    seconds: float     # score_clip's wall time


def measure(n: int = 8, seconds: float = 15.0, seed: int = 0,
            chosen: list[Family] | None = None) -> Iterator[Scored]:
    """Score n clips of every family (one rng per family, so a family's clips do not move when others
    are added)."""
    for i, fam in enumerate(chosen or families()):
        rng = np.random.default_rng([seed, i])
        for _ in range(n):
            audio, words = fam.make(rng, seconds)
            start = time.perf_counter()
            scored = metrics.score_clip(audio, SR)
            took = time.perf_counter() - start
            raised = frozenset(k for k, v in scored["flags"].items() if v)
            yield Scored(fam.name, fam.expect, raised, {f: scored["metrics"][m] for f, (m, _) in JUDGED.items()},
                         words, took)


def _fmt(v) -> str:
    return "None" if v is None else f"{v:.3g}"


def report(rows: list[Scored]) -> list[str]:
    """The figures as printable lines (see the module docstring)."""
    lines = []
    for flag, (metric, threshold) in JUDGED.items():
        pos = [r for r in rows if flag in r.expect]
        neg = [r for r in rows if flag not in r.expect]
        hit = sum(flag in r.raised for r in pos)
        false = sum(flag in r.raised for r in neg)
        lo = min((r.scores[flag] for r in pos if r.scores[flag] is not None), default=None)
        hi = max((r.scores[flag] for r in neg if r.scores[flag] is not None), default=None)
        lines.append(f"{flag} ({metric} > {threshold:g}): detected {hit}/{len(pos)} ({hit / max(len(pos), 1):.0%}), "
                     f"false positives {false}/{len(neg)} ({false / max(len(neg), 1):.1%}); "
                     f"lowest positive {_fmt(lo)}, highest negative {_fmt(hi)}")
    lines.append("")
    names = list(JUDGED)
    lines.append(f"{'family':40s} {'clips':>5s} {'exact':>5s} " + " ".join(f"{n:>11s}" for n in names) +
                 "  " + "  ".join(f"{JUDGED[n][0]} min/median/max" for n in names))
    for fam in dict.fromkeys(r.family for r in rows):
        mine = [r for r in rows if r.family == fam]
        exact = sum(r.raised == r.expect for r in mine)
        counts = " ".join(f"{sum(n in r.raised for r in mine):>4d} raised" for n in names)
        spans = []
        for n in names:
            vals = [r.scores[n] for r in mine if r.scores[n] is not None]
            spans.append("/".join(_fmt(v) for v in (min(vals), float(np.median(vals)), max(vals))) if vals else "None")
        lines.append(f"{fam:40s} {len(mine):5d} {exact:5d} {counts}  " + "  ".join(f"{s:>27s}" for s in spans))
    wrong = [r for r in rows if r.raised != r.expect]
    lines.append("")
    lines.append(f"exactly the expected flags: {len(rows) - len(wrong)}/{len(rows)} clips")
    for r in wrong[:20]:
        lines.append(f"  {r.family} ({r.words}): raised {sorted(r.raised)}, expected {sorted(r.expect)}; "
                     + ", ".join(f"{JUDGED[n][0]} {_fmt(r.scores[n])}" for n in names))
    took = np.array([r.seconds for r in rows])
    lines.append(f"score_clip per clip: mean {took.mean() * 1000:.0f} ms, max {took.max() * 1000:.0f} ms "
                 f"({len(rows)} clips)")
    return lines


# --- real rendered music with failures injected at a known time ----------------------------------------

REAL_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_music"
ONSETS = {"early": 0.2, "late": 0.6}  # of the clip: 3 s and 9 s of 15
FAULTS = frozenset(f.name for f in FLAGS if f.fault and not f.stereo and not f.melody)


def read_real(folder: Path) -> dict[str, np.ndarray]:
    """{piece name: (samples,) float32 at SR} of the rendered set (pieces.json names the files)."""
    import soundfile as sf

    table = json.loads((Path(folder) / "pieces.json").read_text(encoding="utf-8"))
    out = {}
    for name, info in table.items():
        x, sr = sf.read(Path(folder) / info["file"], dtype="float32")
        if sr != SR:
            raise SystemExit(f"error: {folder}/{info['file']} is {sr} Hz; the set is rendered at {SR}")
        out[name] = x if x.ndim == 1 else x.mean(axis=1)
    return out


def _rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _ramp(n: int, a: int) -> np.ndarray:
    """0 before sample a, 1 from 50 ms after it (a failure that sets in without a click)."""
    return np.clip((np.arange(n) - a) / (0.05 * SR), 0.0, 1.0)


def _noise(x, a, rng, level, under: bool, pink: bool = False):
    """White (or pink) noise from sample a on at `level` x the clip's RMS: replacing the music, or under it."""
    n = rng.standard_normal(len(x))
    if pink:
        spec = np.fft.rfft(n)
        spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1))
        n = np.fft.irfft(spec, len(x))
    n *= level * _rms(x) / _rms(n)
    r = _ramp(len(x), a)
    return ((x if under else x * (1 - r)) + n * r).astype(np.float32)


def _fade(x, a, db, power):
    """From sample a the level falls to -db at the end, in dB as u**power (1 linear, 2 a gentle start)."""
    u = np.clip((np.arange(len(x)) - a) / max(len(x) - a, 1), 0.0, 1.0)
    return (x * 10 ** (-db * u ** power / 20)).astype(np.float32)


def _clicks_after(x, a, rng, count, level):
    times = np.sort(rng.uniform(a / SR + 0.05, len(x) / SR - 0.05, count))
    return with_clicks(x, times, level, SR, seed=int(rng.integers(1 << 30)))


def _clip_after(x, a, gain):
    y = x.copy()
    y[a:] = np.clip(x[a:] * gain, -1.0, 1.0)
    return y


# (failure, flag it must raise, clear: counts toward the >= 95% goal, (x, start sample, rng) -> audio).
REAL_FAILURES = (
    ("collapses into white noise (1.5x the music's RMS)", "noisy", True,
     lambda x, a, r: _noise(x, a, r, 1.5, False)),
    ("white noise under the music, SNR -3 dB", "noisy", True, lambda x, a, r: _noise(x, a, r, 10 ** (3 / 20), True)),
    ("white noise under the music, SNR 0 dB", "noisy", False, lambda x, a, r: _noise(x, a, r, 1.0, True)),
    ("white noise under the music, SNR +3 dB", "noisy", False, lambda x, a, r: _noise(x, a, r, 10 ** (-3 / 20), True)),
    ("white noise under the music, SNR +6 dB", "noisy", False, lambda x, a, r: _noise(x, a, r, 0.5, True)),
    ("collapses into pink noise (1.5x RMS)", "noisy", False, lambda x, a, r: _noise(x, a, r, 1.5, False, pink=True)),
    ("silence from the onset", "silent", True,
     lambda x, a, r: np.where(np.arange(len(x)) < a, x, 0).astype(np.float32)),
    ("fades to -40 dB (linear in dB)", "fades_out", True, lambda x, a, r: _fade(x, a, 40.0, 1)),
    ("fades to -30 dB (quadratic in dB)", "fades_out", False, lambda x, a, r: _fade(x, a, 30.0, 2)),
    ("falls into a 1.5 s loop", "repetitive", True, lambda x, a, r: looped(x, a / SR, 1.5, SR)),
    ("30 clicks at 0.2 after the onset", "crackle", True, lambda x, a, r: _clicks_after(x, a, r, 30, 0.2)),
    ("10 clicks at 0.1 after the onset", "crackle", False, lambda x, a, r: _clicks_after(x, a, r, 10, 0.1)),
    ("driven 12 dB into clipping", "clipping", True, lambda x, a, r: _clip_after(x, a, 4.0)),
)


@dataclass
class RealScored:
    piece: str
    failure: str          # "clean" for the untouched clip
    onset: str | None     # "early" / "late"
    at_s: float | None    # the injected onset
    expect: str | None    # the flag it must raise
    clear: bool
    raised: frozenset     # fault flags raised
    found_s: float | None  # the recorded onset of the expected flag (noisy_from_s, ...)


def measure_real(folder: Path = REAL_DIR, seed: int = 0) -> Iterator[RealScored]:
    """Every clip of the set clean, then with each REAL_FAILURES failure at each onset."""
    for i, (piece, x) in enumerate(read_real(folder).items()):
        seconds = len(x) / SR
        scored = metrics.score_clip(x, SR)
        yield RealScored(piece, "clean", None, None, None, False,
                         frozenset(k for k, v in scored["flags"].items() if v and k in FAULTS), None)
        for j, (failure, flag, clear, make) in enumerate(REAL_FAILURES):
            for when, share in ONSETS.items():
                rng = np.random.default_rng([seed, i, j, int(share * 100)])
                at = round(share * seconds, 1)
                scored = metrics.score_clip(make(x, int(at * SR), rng), SR)
                yield RealScored(piece, failure, when, at, flag, clear,
                                 frozenset(k for k, v in scored["flags"].items() if v and k in FAULTS),
                                 scored.get("onsets", {}).get(flag))


def real_report(rows: list[RealScored]) -> list[str]:
    """The real-music figures as printable lines (see the module docstring)."""
    clean = [r for r in rows if r.failure == "clean"]
    fp = [r for r in clean if r.raised]
    lines = [f"clean real music: {len(clean) - len(fp)}/{len(clean)} clips with no fault flag"
             + "".join(f"; {r.piece} raised {sorted(r.raised)}" for r in fp)]
    lines.append(f"{'failure (flag it must raise)':64s} {'early':>7s} {'late':>7s}  onset error (s)  missed")
    for failure, flag, clear, _ in REAL_FAILURES:
        mine = [r for r in rows if r.failure == failure]
        cells, missed, errors = [], [], []
        for when in ONSETS:
            at = [r for r in mine if r.onset == when]
            hit = [r for r in at if r.expect in r.raised]
            cells.append(f"{len(hit)}/{len(at)}")
            missed += [f"{r.piece} ({when})" for r in at if r.expect not in r.raised]
            errors += [r.found_s - r.at_s for r in hit if r.found_s is not None]
        err = f"{min(errors):+.1f}..{max(errors):+.1f}" if errors else "-"
        name = f"{failure} ({flag}{', clear' if clear else ''})"
        lines.append(f"{name:64s} {cells[0]:>7s} {cells[1]:>7s}  {err:>15s}  {', '.join(missed) or '-'}")
    for when in ONSETS:
        clear = [r for r in rows if r.clear and r.onset == when]
        hit = sum(r.expect in r.raised for r in clear)
        lines.append(f"clear failures, {when} onset: {hit}/{len(clear)} detected ({hit / max(len(clear), 1):.0%})")
    return lines


from musicgen_lora.cli.args import Parser, number_type, positive_int  # noqa: E402
from musicgen_lora.cli.runner import cli  # noqa: E402

# The loop families start their loop at up to 60% of the clip and need 0.5 s (the shortest loop)
# before 70% of it: 5 s is the shortest clip they fit in.
SECONDS = number_type(float, low=5, words="a number of seconds >= 5 (the loop families need that much)")


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--variants", type=positive_int, default=8, help="Clips per family.")
    p.add_argument("--seconds", type=SECONDS, default=15.0, help="Length of each clip.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the draws (a family's clips depend on it only).")
    p.add_argument("--real", type=Path, default=REAL_DIR,
                   help="Folder of rendered real music with its pieces.json (benchmarks/real_music.py).")
    p.add_argument("--no_real", action="store_true", help="Only the constructed families.")
    p.add_argument("--no_constructed", action="store_true", help="Only the real-music figures.")
    args = p.parse_args(argv)
    if not args.no_real and not (args.real / "pieces.json").is_file():
        raise UserError(f"{args.real}: no pieces.json; render the set with python -m benchmarks.real_music "
                        f"--output_dir {args.real}, or pass --no_real")

    start = time.perf_counter()
    if not args.no_constructed:
        fams = families()
        print(f"{args.variants} clips x {len(fams)} families, {args.seconds:g} s each, seed {args.seed}")
        print("\n".join(report(list(measure(args.variants, args.seconds, args.seed, fams)))))
    if not args.no_real:
        at = ", ".join(f"{k} ({v:.0%} of the clip)" for k, v in ONSETS.items())
        shown = args.real.resolve()
        shown = shown.relative_to(REAL_DIR.parents[2]) if REAL_DIR.parents[2] in shown.parents else shown
        print(f"\nreal music ({shown}): failures injected at {at}")
        print("\n".join(real_report(list(measure_real(args.real, args.seed)))))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
