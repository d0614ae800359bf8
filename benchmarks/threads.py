"""CPU threads for torch: 1 thread vs 2 vs the default policy (threads.py), on a quiet CPU and beside one
competing busy process, for a LoRA training step and for generation -- measured in one run.

    python -m benchmarks.threads                  # tiny + small (~6 min on 2 cores)
    python -m benchmarks.threads --sizes tiny     # the tiny model only (~2 min)
    python -m benchmarks.threads --counts 1,4,8   # other fixed counts (the first is the base)

Models are built offline (make_tiny_model.py: random weights, the real architectures' speed). Every
measurement runs in a fresh child process whose thread count is set before torch is imported (so no
thread pool is reused): `default` is what the scripts do without --threads (threads.apply_threads:
the usable CPUs minus those busy right now; OMP_NUM_THREADS is removed from the children's
environment for it). The load is one other process spinning in pure Python, started before the
child and stopped after it.

- train: one LoRA step (model.lora.apply_lora, model.loss.batch_loss, backward, AdamW) on a batch
  of --batch_size windows of random codes (what the code cache feeds the trainer), after one untimed
  warm-up step; --steps timed steps, the mean reported. Window: --duration s (tiny) and
  --small_duration s (small).
- generate: generate.generate_audio of --gen_seconds of audio for one prompt (guidance 3: two
  rows), after a short untimed warm-up call; the fastest of --repeats.

Prints the seconds of each, what the default policy chose in each condition, and the ratios: 2
threads / 1 thread quiet and loaded (below 1: 2 threads are faster), default / best of the fixed
counts. Results can differ slightly between thread counts (CPU rounding), never their timing's use.
This script has no --threads flag of its own: thread counts are what it compares.
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.paths import SCRIPTS
from musicgen_lora.cli.args import Parser, positive_float, positive_int
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError
from musicgen_lora.generation.sampling import GenerationSettings

SIZES = ("tiny", "small")
PROMPT = "lofi hip hop beat with mellow rhodes chords"
SPIN = "while True: pass"


# --------------------------------------------------------------------------------------------
# The child: one measurement, its thread count set before torch is imported
# --------------------------------------------------------------------------------------------
def _train_step(model, processor, spec: dict) -> dict:
    import torch

    from musicgen_lora.data.dataset import Collator
    from musicgen_lora.model.checkpoint import model_info
    from musicgen_lora.model.lora import apply_lora
    from musicgen_lora.model.loss import batch_loss

    model = apply_lora(model, 12, 24, 0.05)
    info = model_info(model)
    gen = torch.Generator().manual_seed(0)

    def random_batch(seconds):
        collate = Collator(processor, int(round(seconds * info["sample_rate"])), info["hop_length"])
        frames = collate.window_frames
        return collate([{"description": f"{PROMPT} {i}", "index": i, "num_frames": frames,
                         "codes": torch.randint(0, info["vocab_size"], (info["num_codebooks"], frames), generator=gen)}
                        for i in range(spec["batch_size"])])

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    torch.manual_seed(0)
    model.train()
    # The warm-up step (optimizer state, first-call set-up) on a 1 s window: same path, a fraction of the time.
    batches = [random_batch(min(1.0, spec["window_s"]))] + [random_batch(spec["window_s"])] * spec["steps"]
    times = []
    for batch in batches:
        start = time.perf_counter()
        loss, _ = batch_loss(model, batch, 0.1, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"seconds": sum(times[1:]) / spec["steps"], "frames": int(batches[-1]["codes"].shape[-1])}


def _generate(model, processor, spec: dict) -> dict:
    from musicgen_lora.generation.generate import generate_audio

    generate_audio(model, processor, [PROMPT], GenerationSettings(min(0.1, spec["gen_seconds"]), batch_size=1), seed=0,
                   progress=False)  # warm-up: allocator and kernel set-up
    best = float("inf")
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        generate_audio(model, processor, [PROMPT], GenerationSettings(spec["gen_seconds"], batch_size=1), seed=0,
                       progress=False)
        best = min(best, time.perf_counter() - start)
    return {"seconds": best}


def child(spec_json: str):
    """One measurement; prints one JSON line."""
    from musicgen_lora.core import threads as threads

    spec = json.loads(spec_json)
    decided = threads.apply_threads(spec["threads"])  # None: the default policy, as a script without --threads
    import torch

    threads.ensure_torch_threads()
    from musicgen_lora.model.checkpoint import load_model_and_processor

    start = time.perf_counter()
    model, processor = load_model_and_processor(spec["model"])
    load_s = time.perf_counter() - start
    out = (_train_step if spec["task"] == "train" else _generate)(model, processor, spec)
    out.update(decided=decided, torch_threads=torch.get_num_threads(), load_s=load_s)
    print(json.dumps(out))


# --------------------------------------------------------------------------------------------
# The parent: models, the competing process, one child per measurement
# --------------------------------------------------------------------------------------------
def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error")
    return env


def measure(spec: dict) -> dict:
    code = "import sys; from musicgen_lora.cli.benchmark_threads import child; child(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Competitor:
    """One other process spinning in pure Python (one busy CPU) while the block runs."""

    def __enter__(self):
        from musicgen_lora.core.threads import busy_cpus

        before = busy_cpus()
        self.proc = subprocess.Popen([sys.executable, "-c", SPIN])
        deadline = time.monotonic() + 5
        while busy_cpus() <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def build_model(size: str, work: Path) -> Path:
    out = work / f"{size}-musicgen"
    if not (out / "config.json").is_file():
        proc = subprocess.run([sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--output_dir", str(out),
                               "--size", size, "--seed", "0"], capture_output=True, text=True, env=child_env())
        if proc.returncode != 0:
            raise RuntimeError(f"building the {size} model failed:\n{proc.stderr[-3000:]}")
    return out


def parse_counts(text: str) -> list[int]:
    try:
        counts = [positive_int(c) for c in text.split(",") if c.strip()]
    except argparse.ArgumentTypeError:
        counts = []
    if not counts or len(set(counts)) != len(counts):
        raise UserError(f"--counts {text}: give distinct whole numbers >= 1, comma-separated (e.g. 1,2)")
    return counts


def parse_sizes(text: str) -> list[str]:
    sizes = [s.strip() for s in text.split(",") if s.strip()]
    if not sizes or any(s not in SIZES for s in sizes):
        raise UserError(f"--sizes {text}: give {' and/or '.join(SIZES)}, comma-separated")
    return sizes


def settings_label(setting) -> str:
    return "default" if setting is None else f"{setting} thread{'s' if setting != 1 else ''}"


def run(args, work: Path) -> list[dict]:
    sizes, counts = parse_sizes(args.sizes), parse_counts(args.counts)
    settings = [*counts, None]
    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        model = build_model(size, work)
        print(f"[{size}] model ready in {time.perf_counter() - t0:.0f} s", flush=True)
        for loaded in (False, True):
            for task in ("train", "generate"):
                spec = {"model": str(model), "task": task, "steps": args.steps, "repeats": args.repeats,
                        "batch_size": args.batch_size or (2 if size == "tiny" else 1),
                        "window_s": args.duration if size == "tiny" else args.small_duration,
                        "gen_seconds": args.gen_seconds}
                for setting in settings:
                    with Competitor() if loaded else contextlib.nullcontext():
                        r = measure({**spec, "threads": setting})
                    rows.append({"size": size, "task": task, "loaded": loaded, "setting": setting, **r,
                                 "window_s": spec["window_s"], "batch_size": spec["batch_size"],
                                 "gen_seconds": spec["gen_seconds"]})
                    print(f"[{size}] {task:8} {'loaded' if loaded else 'quiet':6} {settings_label(setting):9} "
                          f"-> {r['torch_threads']} thread(s): {r['seconds']:.3f} s", flush=True)
    return rows


def report(rows: list[dict], counts: list[int]) -> list[str]:
    def find(size, task, loaded, setting):
        return next(r for r in rows if (r["size"], r["task"], r["loaded"], r["setting"]) == (size, task, loaded,
                                                                                             setting))

    lines = ["", f"{'model':6} {'task':8} {'what':22} {'condition':9} {'threads':>9} {'seconds':>9}"]
    order = [*counts, None]
    for r in sorted(rows, key=lambda r: (SIZES.index(r["size"]), r["task"] != "train", r["loaded"],
                                         order.index(r["setting"]))):
        what = (f"LoRA step, {r['window_s']:g} s x {r['batch_size']}" if r["task"] == "train"
                else f"{r['gen_seconds']:g} s, 1 prompt")
        lines.append(f"{r['size']:6} {r['task']:8} {what:22} {'loaded' if r['loaded'] else 'quiet':9} "
                     f"{settings_label(r['setting']):>9} {r['seconds']:>9.3f}"
                     + (f"  (chose {r['decided']['threads']}: {r['decided']['usable_cpus']} usable, "
                        f"{r['decided']['busy_cpus']} busy)" if r["setting"] is None else ""))
    base, top = counts[0], counts[-1]
    lines += ["", f"time ratios ({top} threads / {base}: below 1 means {top} are faster; default / best of "
                  f"{', '.join(map(str, counts))}: 1.00 means the default picked the fastest)"]
    for size in dict.fromkeys(r["size"] for r in rows):
        for task in ("train", "generate"):
            parts = []
            for loaded in (False, True):
                t = {s: find(size, task, loaded, s)["seconds"] for s in [*counts, None]}
                word = "loaded" if loaded else "quiet"
                parts.append(f"{word}: {top}/{base} {t[top] / t[base]:.2f}, default/best "
                             f"{t[None] / min(t[c] for c in counts):.2f}")
            lines.append(f"{size:6} {task:8} " + "; ".join(parts))
    return lines


def conditions_line() -> str:
    from musicgen_lora.core.threads import busy_cpus, default_threads, usable_cpus

    loadavg = Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").is_file() else "n/a"
    saved = {k: os.environ.pop(k) for k in ("OMP_NUM_THREADS",) if k in os.environ}
    try:
        quiet = default_threads()
        with Competitor():
            loaded = default_threads()
    finally:
        os.environ.update(saved)
    return (f"{os.cpu_count()} CPUs, {usable_cpus()} usable, {busy_cpus()} busy now; /proc/loadavg {loadavg}\n"
            f"default_threads() here: quiet {quiet[0]} ({quiet[1]}); with one competing process {loaded[0]} "
            f"({loaded[1]})")


@cli
def main(argv=None):
    p = Parser(description=__doc__, threads_flag=False)
    p.add_argument("--sizes", default="tiny,small", help="Models measured: tiny and/or small, comma-separated.")
    p.add_argument("--counts", default="1,2",
                   help="Fixed thread counts compared with the default policy (the first is the ratios' base).")
    p.add_argument("--duration", type=positive_float, default=15.0, help="Training window of the tiny model, s.")
    p.add_argument("--small_duration", type=positive_float, default=5.0,
                   help="Training window of the small architecture, s (15 s takes minutes per step on 2 cores).")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="Windows per training step (default: 2 tiny, 1 small, as benchmarks/train.py).")
    p.add_argument("--steps", type=positive_int, default=1, help="Timed training steps (after one warm-up step).")
    p.add_argument("--gen_seconds", type=positive_float, default=1.0, help="Seconds of audio generated.")
    p.add_argument("--repeats", type=positive_int, default=1, help="Generation repeats; the fastest is kept.")
    p.add_argument("--work_dir", default=None, help="Keep the built models here (default: a temp dir, removed).")
    args = p.parse_args(argv)
    parse_sizes(args.sizes), parse_counts(args.counts)  # a bad value is an error before anything is built

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        print(conditions_line(), flush=True)
        rows = run(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(report(rows, parse_counts(args.counts))))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
