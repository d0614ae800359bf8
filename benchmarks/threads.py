"""OpenMP's wait policy beside busy processes: libgomp's default (idle threads spin) vs OMP_WAIT_POLICY=PASSIVE
(idle threads sleep), at 1 and 2 threads, quiet and beside 1 and 2 busy-loop processes -- measured in one run.

    python -m benchmarks.threads        # ~2 min on 2 cores

The policy is read once, when torch loads libgomp, so each policy gets its own child process; inside
it the thread count (torch.set_num_threads) and the busy processes (pure-Python `while True: pass`,
started before a cell and killed after it) change cell by cell. Workloads, each timed as the fastest of
up to 3 repeats (fewer when a repeat passes 1 s):

- tiny generate: generate.generate_audio of --gen_seconds on the tiny offline model (make_tiny_model.py),
  one prompt, guidance 3: hundreds of small ops, a thread handover each -- where spinning hurt most.
- small decode: one decoder step's feed-forward blocks of musicgen-small (2 rows x 1024 -> 4096 -> 1024,
  4 layers, 8 steps): what generation does per token.
- small train: (750 frames x 1024) @ (1024 x 4096) and back, twice: a 15 s window's feed-forward matmuls.

Prints seconds per cell, the ratios passive / default, and whether each output is bit-identical across
the policies (a wait policy changes how idle threads wait, never how the work is split) and across
thread counts (it is not: CPU rounding follows the split).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.paths import ROOT, SCRIPTS
from musicgen_lora.cli.args import Parser, positive_float
from musicgen_lora.cli.runner import cli

POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
WORKLOADS = ("tiny generate", "small decode", "small train")
COUNTS, LOADS = (1, 2), (0, 1, 2)
SPIN = "while True: pass"


def _workloads(model_dir: str, gen_seconds: float) -> dict:
    import torch

    from musicgen_lora.generation.generate import generate_audio
    from musicgen_lora.generation.sampling import GenerationSettings
    from musicgen_lora.model.checkpoint import load_model_and_processor

    model, processor = load_model_and_processor(model_dir)
    g = torch.Generator().manual_seed(0)
    ffn = [(torch.randn(1024, 4096, generator=g) / 32, torch.randn(4096, 1024, generator=g) / 64) for _ in range(4)]
    rows, frames = torch.randn(2, 1024, generator=g), torch.randn(750, 1024, generator=g)

    def decode():
        x = rows
        for _ in range(8):
            for w1, w2 in ffn:
                x = x + torch.nn.functional.gelu(x @ w1) @ w2
        return x

    def train():
        return [torch.nn.functional.gelu(frames @ w1) @ w2 for w1, w2 in ffn[:2]]

    def generate():
        return generate_audio(model, processor, ["lofi beat"], GenerationSettings(gen_seconds, batch_size=1),
                              seed=0, progress=False, return_codes=True)[1]

    return {"tiny generate": generate, "small decode": decode, "small train": train}


def _digest(out) -> str:
    import torch

    tensors = out if isinstance(out, list) else [out]
    return hashlib.sha1(b"".join(torch.as_tensor(t).contiguous().numpy().tobytes() for t in tensors)).hexdigest()[:10]


def child(model_dir: str, gen_seconds: float):
    """One policy's cells; prints one JSON line: [{workload, threads, busy, seconds, digest}, ...]."""
    import torch

    work = _workloads(model_dir, gen_seconds)
    cells = []
    for busy in LOADS:
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        try:
            time.sleep(0.3 if busy else 0)  # the spinners are running before the first timing
            for n in COUNTS:
                torch.set_num_threads(n)
                for name, fn in work.items():
                    digest, times = _digest(fn()), []  # the warm-up call, untimed
                    while len(times) < 3 and sum(times) < 1.0:
                        start = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - start)
                    cells.append({"workload": name, "threads": n, "busy": busy, "seconds": min(times),
                                  "digest": digest})
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    print(json.dumps(cells))


def measure(policy: str, model: Path, gen_seconds: float) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(POLICIES[policy], OMP_NUM_THREADS=str(max(COUNTS)), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    code = "import sys; from benchmarks.threads import child; child(sys.argv[1], float(sys.argv[2]))"
    proc = subprocess.run([sys.executable, "-c", code, str(model), str(gen_seconds)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"the {policy} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(results: dict) -> list[str]:
    cell = {(p, c["workload"], c["threads"], c["busy"]): c for p, cells in results.items() for c in cells}
    lines = ["", f"{'workload':14} {'busy':>4} {'threads':>7} {'default s':>10} {'passive s':>10} "
                 f"{'passive/default':>16}"]
    for w in WORKLOADS:
        for busy in LOADS:
            for n in COUNTS:
                a, b = cell["default", w, n, busy]["seconds"], cell["passive", w, n, busy]["seconds"]
                lines.append(f"{w:14} {busy:>4} {n:>7} {a:>10.3f} {b:>10.3f} {b / a:>16.2f}")
    lines += ["", "2 threads / 1 thread (below 1: 2 are faster)"]
    ratio = lambda p, w, busy: cell[p, w, 2, busy]["seconds"] / cell[p, w, 1, busy]["seconds"]  # noqa: E731
    for w in WORKLOADS:
        lines.append(f"{w:14} " + "; ".join(f"busy {busy}: default {ratio('default', w, busy):.2f}, passive "
                                            f"{ratio('passive', w, busy):.2f}" for busy in LOADS))
    lines += ["", "outputs bit-identical (every load):"]
    for w in WORKLOADS:
        same_policy = all(len({cell[p, w, n, busy]["digest"] for p in POLICIES for busy in LOADS}) == 1
                          for n in COUNTS)
        same_count = len({cell["default", w, n, 0]["digest"] for n in COUNTS}) == 1
        lines.append(f"{w:14} default vs passive at each thread count: {'yes' if same_policy else 'NO'}; "
                     f"1 vs 2 threads: {'yes' if same_count else 'no'}")
    return lines


def loadavg() -> str:
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.is_file() else "n/a"


@cli
def main(argv=None):
    p = Parser(description=__doc__, threads_flag=False)  # thread counts are what it compares
    p.add_argument("--gen_seconds", type=positive_float, default=0.5, help="Seconds of audio per tiny generate call.")
    p.add_argument("--work_dir", default=None, help="Keep the tiny model here (default: a temp dir, removed).")
    args = p.parse_args(argv)
    from musicgen_lora.core.threads import usable_cpus

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-threads-"))
    model = work / "tiny-musicgen"
    start = time.perf_counter()
    print(f"{os.cpu_count()} CPUs, {usable_cpus()} usable; load average before: {loadavg()}", flush=True)
    try:
        if not (model / "config.json").is_file():
            subprocess.run([sys.executable, str(SCRIPTS / "make_tiny_model.py"), "--output_dir", str(model),
                            "--seed", "0"], check=True, capture_output=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        results = {}
        for policy in POLICIES:
            results[policy] = measure(policy, model, args.gen_seconds)
            print(f"{policy}: done at {time.perf_counter() - start:.0f} s", flush=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(report(results)))
    print(f"load average after: {loadavg()}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
