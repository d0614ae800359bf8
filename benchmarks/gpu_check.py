"""One command that proves the CUDA path, ready for the minutes a GPU is lent: training in fp16 and bf16
at several batch sizes (loss moving, no NaN, s/step, MFU, peak memory against the memory plan), a
resumed run against an uninterrupted one, training labels against greedy generation, generation
speed, evaluate.py --compare_multi timed, and the memory plan's verdicts for the large checkpoints.
Everything runs through the toolkit's own commands on random-weight checkpoints of the real
architectures, built offline. Writes OUT/gpu_check.json and OUT/gpu_check.md and prints the table.

    python -m benchmarks.gpu_check --output_dir /tmp/gpu_check            # on a CUDA machine: ~8 min on an H100
    python -m benchmarks.gpu_check --quick --output_dir /tmp/gpu_check    # on a CPU: the tiny model, ~1 min

A section that fails is reported with its error and the others still run: one run of this command
must bring back everything it can.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

from benchmarks.paths import ROOT
from musicgen_lora.cli.args import Parser
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import UserError

MARKER = ".gpu_check"
PROMPTS_8 = ROOT / "finetune" / "data" / "eval" / "evaluation_prompts_8.json"


def run_cli(module: str, *args) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of a toolkit command's main() run in this process."""
    import importlib

    main = importlib.import_module(f"musicgen_lora.cli.{module}").main
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args]) or 0
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t0


def section(report: dict, name: str):
    """Record a section's result, or its error (with the last lines of the traceback): never fatal."""

    class Recorder(contextlib.AbstractContextManager):
        def __enter__(self):
            self.t0 = time.perf_counter()
            report[name] = {}
            return report[name]

        def __exit__(self, kind, exc, tb):
            report[name]["seconds"] = round(time.perf_counter() - self.t0, 1)
            if exc is not None and not isinstance(exc, KeyboardInterrupt):
                report[name]["error"] = f"{type(exc).__name__}: {exc}"
                report[name]["traceback"] = traceback.format_exc().splitlines()[-6:]
                return True
            return False

    return Recorder()


def device_facts() -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(device=p.name, memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                     bf16=torch.cuda.is_bf16_supported())
    else:
        facts.update(device="cpu", threads=torch.get_num_threads())
    return facts


def peak_flops(device: str, dtype_name: str) -> float:
    """FLOP/s of a large matmul in this dtype on this device: the practical peak MFU is measured against."""
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    n = 4096 if device == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_once(work: Path, model: Path, data: Path, name: str, extra: list, steps: int, window: float) -> dict:
    """One train_lora.py run; its losses, speed and memory against the plan."""
    import torch

    out = work / "runs" / name
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    code, _, err, seconds = run_cli("train", "--model_path", model, "--data_dir", data, "--output_dir", out,
                                    "--max_steps", steps, "--target_duration", window, "--logging_steps", 1,
                                    "--save_steps", max(1, steps // 2), "--learning_rate", 1e-3, "--warmup_steps", 0,
                                    "--no_progress", "--overwrite_output_dir", *extra)
    if code != 0:
        raise RuntimeError(f"train_lora.py exited {code}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    records = read_jsonl(out / "logs" / "metrics.jsonl")
    train = [r for r in records if r.get("type") == "train"]
    config = json.loads((out / "run_config.json").read_text())
    losses = [r["train_loss"] for r in train]
    result = {"steps": len(train), "precision": config.get("precision"), "first_loss": losses[0] if losses else None,
              "last_loss": losses[-1] if losses else None,
              "nan": any(not math.isfinite(x) for x in losses) or not losses,
              "tokens_per_s": round(sum(r.get("tokens_per_s", 0) for r in train[1:]) / max(len(train) - 1, 1), 1),
              "plan_gib": config.get("memory_plan_gib"), "run_dir": str(out), "wall_s": round(seconds, 1)}
    result["loss_moved"] = bool(losses) and losses[-1] < losses[0]
    step_times = [b["time"] - a["time"] for a, b in zip(train, train[1:]) if b["step"] == a["step"] + 1]
    result["s_per_step"] = round(sorted(step_times)[len(step_times) // 2], 4) if step_times else None
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
        result["peak_gib"] = round(peak, 2)
        if result["plan_gib"]:
            result["plan_error_pct"] = round(100 * (result["plan_gib"] - peak) / peak, 1)
    else:
        result["peak_gib"] = round(max((r.get("peak_memory_mb") or 0) for r in train) / 1024, 2) if train else None
    return result


def mfu(result: dict, params: int, device: str) -> float | None:
    """Model FLOPs utilisation: a LoRA step costs ~4 x parameters x tokens (2 forward, 2 for the gradients
    flowing back through the frozen weights; the LoRA weights' own are negligible), against the
    measured matmul peak in the step's precision."""
    if not result.get("tokens_per_s"):
        return None
    flops = 4 * params * result["tokens_per_s"]
    return round(100 * flops / peak_flops(device, result["precision"] or "fp32"), 1)


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--output_dir", required=True, help="Where the runs, gpu_check.json and gpu_check.md go.")
    p.add_argument("--quick", action="store_true", help="The tiny model, a few steps: proves the script on a CPU.")
    p.add_argument("--size", default=None, help="Architecture to train (default: small; tiny with --quick).")
    args = p.parse_args(argv)

    import torch

    from musicgen_lora.model.offline import build

    out = Path(args.output_dir)
    work = out / "work"
    if work.exists():  # this command's own scratch folder, rebuilt each run; anything else is left alone
        if not (work / MARKER).is_file():
            raise UserError(f"{work}: exists and was not made by gpu_check; pass another --output_dir")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("scratch folder of python -m benchmarks.gpu_check; rebuilt on each run\n")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = args.size or ("tiny" if args.quick or device == "cpu" else "small")
    quick = args.quick or device == "cpu"
    report = {"facts": {**device_facts(), "size": size, "quick": quick}}
    steps, window = (4, 2.0) if quick else (20, 15.0)

    model = work / f"musicgen-{size}"
    with section(report, "build") as r:
        build(str(model), size=size, seed=0)
        code, _, err, _ = run_cli("prepare", "--create_example", "--output_dir", work / "data", "--num_examples",
                                  8 if quick else 16, "--no_progress")
        r["data"] = str(work / "data")
        if code != 0:
            raise RuntimeError(err)
    data = work / "data"
    params = 0
    with contextlib.suppress(Exception):
        from safetensors import safe_open

        for f in model.glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                params += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys() if "decoder" in k)

    with section(report, "train") as r:
        precisions = ["fp32"] if device == "cpu" else ["fp16", "bf16"]
        batches = [1, 2] if quick else [1, 2, 4]
        checkpointing = [False] if quick else [False, True]
        r["runs"] = []
        for precision in precisions:
            for batch in batches:
                for ckpt in checkpointing:
                    name = f"{precision}-b{batch}{'-ckpt' if ckpt else ''}"
                    extra = ["--batch_size", batch, "--gradient_accumulation_steps", 1]
                    extra += [] if precision == "fp32" else [f"--{precision}"]
                    extra += ["--gradient_checkpointing"] if ckpt else []
                    try:
                        result = train_once(work, model, data, name, extra, steps, window)
                        result["mfu_pct"] = mfu(result, params, device) if params else None
                    except Exception as e:  # one setting failing (out of memory) leaves the others measured
                        result = {"error": f"{type(e).__name__}: {e}"}
                    r["runs"].append({"name": name, **result})

    first = next((x for x in report["train"].get("runs", []) if "run_dir" in x), None)
    with section(report, "resume") as r:
        if first is None:
            raise RuntimeError("no training run to resume")
        done = Path(first["run_dir"])
        copy = work / "runs" / "resumed"
        shutil.copytree(done, copy)
        half = max(1, steps // 2)
        for later in ("best_model", "final_model", "logs/summary.json"):
            target = copy / later
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for ckpt in (copy / "checkpoints").glob("checkpoint-*"):
            if int(ckpt.name.split("-")[1]) > half:
                shutil.rmtree(ckpt)
        config = json.loads((done / "run_config.json").read_text())
        flags = ["--batch_size", config["batch_size"], "--gradient_accumulation_steps", 1]
        flags += [] if first["precision"] == "fp32" else [f"--{first['precision']}"]
        code, _, err, _ = run_cli("train", "--model_path", model, "--data_dir", data, "--output_dir", copy,
                                  "--max_steps", steps, "--target_duration", window, "--logging_steps", 1,
                                  "--save_steps", half, "--learning_rate", 1e-3, "--warmup_steps", 0, "--no_progress",
                                  "--resume_from_checkpoint", "latest", *flags)
        if code != 0:
            raise RuntimeError(err.strip().splitlines()[-1])
        from safetensors.torch import load_file

        a = load_file(str(done / "final_model" / "adapter_model.safetensors"))
        b = load_file(str(copy / "final_model" / "adapter_model.safetensors"))
        r["resumed_at"] = half
        r["bit_identical"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        r["max_abs_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)

    with section(report, "teacher_forcing") as r:
        code, _, err, _ = run_cli("check_model", "--model_path", model, "--data_dir", data, "--max_clips", 2,
                                  "--target_duration", window)
        found = re.search(r"labels line up with generate\(\)[^:]*: ([\d.]+)%", err)
        r["percent"] = float(found.group(1)) if found else None
        r["exit"] = code
        if found is None:
            raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else "no alignment line")

    with section(report, "generation") as r:
        duration = 1.0 if quick else 15.0
        r["runs"] = []
        for samples in (1, 8):
            code, _, err, seconds = run_cli("inference", "--model_path", model, "--prompts", "lo-fi hip hop beat",
                                            "--num_samples", samples, "--duration", duration, "--output_dir",
                                            work / f"gen{samples}", "--no_progress")
            if code != 0:
                raise RuntimeError(err.strip().splitlines()[-1])
            r["runs"].append({"batch": samples, "seconds": round(seconds, 2),
                              "real_time_factor": round(samples * duration / seconds, 2)})
        r["seconds_for_15s_batch1"] = round(r["runs"][0]["seconds"] * 15.0 / duration, 2)

    with section(report, "evaluate") as r:
        if first is None:
            raise RuntimeError("no training run to evaluate")
        prompts = ["--prompts", "lo-fi beat", "trap beat"] if quick else ["--prompts_file", PROMPTS_8]
        code, _, err, seconds = run_cli("evaluate", "--model_path", model, "--lora_model_path", first["run_dir"],
                                        "--compare_multi", *prompts, "--duration", 1.0 if quick else 15.0,
                                        "--output_dir", work / "evaluation", "--no_progress")
        if code != 0:
            raise RuntimeError(err.strip().splitlines()[-1])
        r["seconds"] = round(seconds, 1)

    with section(report, "memory_plans") as r:
        gib = report["facts"].get("memory_gib", 24.0)
        code, stdout, err, _ = run_cli("memory_plan", "--gpu_gib", gib, "--precision", "bf16", "--batch_size", 1,
                                       "--target_duration", 15)
        for name in ("musicgen-medium", "musicgen-large", "musicgen-stereo-large"):
            rows = [" ".join(line.split()) for line in stdout.splitlines() if line.split()[:1] == [name]]
            r[name] = rows or f"not in the plan's table (exit {code})"

    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    markdown = to_markdown(report)
    (out / "gpu_check.md").write_text(markdown)
    print(markdown)
    failed = [name for name, s in report.items() if isinstance(s, dict) and "error" in s]
    return 1 if failed else 0


def to_markdown(report: dict) -> str:
    f = report["facts"]
    lines = [f"# gpu_check: {f.get('device')} ({f.get('memory_gib', '-')} GiB), torch {f['torch']}, "
             f"architecture {f['size']}{' (--quick)' if f['quick'] else ''}", "",
             "| training run | steps | loss first -> last | NaN | s/step | tokens/s | MFU % | peak GiB | plan GiB | "
             "plan error % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in report.get("train", {}).get("runs", []):
        if "error" in run:
            lines.append(f"| {run['name']} | error: {run['error']} |||||||||")
            continue
        lines.append(f"| {run['name']} | {run['steps']} | {run['first_loss']:.3f} -> {run['last_loss']:.3f} | "
                     f"{'yes' if run['nan'] else 'no'} | {run['s_per_step']} | {run['tokens_per_s']} | "
                     f"{run.get('mfu_pct')} | {run.get('peak_gib')} | {run.get('plan_gib')} | "
                     f"{run.get('plan_error_pct', '-')} |")
    lines.append("")
    for name in ("resume", "teacher_forcing", "generation", "evaluate", "memory_plans", "build"):
        s = report.get(name, {})
        shown = {k: v for k, v in s.items() if k not in ("traceback",)}
        lines.append(f"- **{name}**: {json.dumps(shown, default=str)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
