"""Read training run directories and turn them into one comparison table (markdown, CSV or HTML).

A run directory is what train_lora.py writes: run_config.json, logs/metrics.jsonl, logs/summary.json,
best_model/, final_model/, and (after evaluate.py) an evaluation folder with summary.json. Every
reader here is forgiving: a crashed, running or half-copied run still gives a row with what is known,
and each thing that could not be read becomes a note instead of an error.

Definitions used in the table (also in USAGE.md):
- train loss of epoch e: mean of the finite `train_loss` values of that epoch's train records;
- valid loss of epoch e: the last eval record of epoch e (the one written at the epoch's end);
- base: the step-0 validation loss (adapter still zero), shown beside ln(vocab);
- best: the lowest validation loss after step 0, with its epoch (that is what best_model/ holds);
- channels: the model's audio channels (run_config.json's model_audio_channels: 1 mono, 2 stereo);
  runs recorded before it was kept trained mono models, so 1;
- steps/s: optimizer steps per second while training -- steps over seconds between consecutive train
  records of the same epoch (validation pauses left out), else samples/s / effective batch;
- listening (shown once an evaluation has one): evaluate.py --tally's mean blind rating (1-5) per model
  with its 95% interval and number of prompt x listener units, and the pairs it cannot separate;
- status: finished (logs/summary.json or final_model/ exists), running (no summary, and metrics.jsonl
  or run_config.json written in the last RUNNING_MINUTES minutes), crashed (logs but no summary),
  incomplete (no logs or no run_config.json), missing (no such directory).
"""
import csv
import glob
import html
import io
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from musicgen_lora.core.common import parse_json
from musicgen_lora.core.outputs import atomic_file
from musicgen_lora.core.paths import PATH_KEYS, recorded_path
from musicgen_lora.evaluation.flags import count_words
from musicgen_lora.evaluation.listening import short_tally
from musicgen_lora.evaluation.report import is_base_entry
from musicgen_lora.training.metrics_log import read_metrics

RUNNING_MINUTES = 10.0



# Hyper-parameters in the order of the user's hand-made table, with short column names.
CORE_PARAMS = {
    "lora_rank": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "learning_rate": "lr",
    "batch_size": "batch", "gradient_accumulation_steps": "accum", "num_epochs": "epochs",
    "warmup": "warmup", "window_seconds": "window s",
}
# Keys that differ between any two runs without being a choice that shapes the result (or that
# another column shows: fp16/bf16/mixed_precision are in "precision").
NOT_PARAMS = {"output_dir", "no_progress", "overwrite_output_dir", "warmup_steps", "warmup_steps_effective",
              "target_duration", "max_duration", "uniform_loss", "run_id", "as_given", "fp16", "bf16",
              "mixed_precision", "requested_precision", "precision", "resumed_from", "config_keys",
              "model_audio_channels"}  # in "channels"
# Figures that follow from the choices (or from the model): shown with --all only.
DERIVED = {"total_steps", "steps_per_epoch", "trainable_parameters", "total_parameters",
           "logging_steps", "save_steps", "num_workers"}  # ... and bookkeeping that leaves the result alone


def _derived(key):
    return key in DERIVED or (key.startswith("model_") and key != "model_path")


@dataclass
class Run:
    path: Path
    name: str
    status: str = "incomplete"
    config: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)          # logs/summary.json (training)
    evaluations: dict = field(default_factory=dict)      # model name -> evaluation entry
    listening: str = ""                                  # blind listening tally, in words (read_listening)
    notes: list = field(default_factory=list)

    @property
    def train_records(self):
        return [r for r in self.records if r.get("type") == "train"]

    @property
    def eval_records(self):
        return [r for r in self.records if r.get("type") == "eval"]

    @property
    def uniform_loss(self):
        for r in self.eval_records:
            if _finite(r.get("uniform_loss")):
                return r["uniform_loss"]
        for source in (self.config, self.summary):
            if _finite(source.get("uniform_loss")):
                return source["uniform_loss"]
        return None

    @property
    def warmup_steps(self):
        w = self.config.get("warmup_steps_effective")
        return w if w is not None else self.config.get("warmup_steps")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _read_json_quiet(path: Path, notes: list, what: str):
    try:
        obj = parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: bad or too deeply nested JSON
        notes.append(f"{what} unreadable ({type(e).__name__}), ignored")
        return None
    if not isinstance(obj, dict):
        notes.append(f"{what} is not a JSON object, ignored")
        return None
    return obj


def find_evaluation_summaries(run_dir: Path):
    """evaluation*/summary.json and */summary.json under a run (logs/summary.json is training's own)."""
    found = sorted(set(run_dir.glob("evaluation*/summary.json")) | set(run_dir.glob("*/summary.json")))
    return [p for p in found if p.parent.name != "logs"]


def read_evaluations(run_dir: Path, notes: list, run_id: str | None = None) -> dict:
    """Model verdicts of the evaluations inside a run dir. An evaluation is credited to this run only
    when the adapters it evaluated carry this run's id (evaluate.py records it): after an
    --overwrite_output_dir, or a folder copied in from another run, its numbers are ignored with a note."""
    models = {}
    for path in find_evaluation_summaries(run_dir):
        obj = _read_json_quiet(path, notes, f"{path.parent.name}/summary.json")
        entries = (obj or {}).get("models")
        if not isinstance(entries, dict):
            if obj is not None:
                notes.append(f"{path.parent.name}/summary.json has no 'models' table, ignored")
            continue
        entries = {name: e for name, e in entries.items() if isinstance(e, dict)}
        credited = credited_models(entries, run_id)
        if credited is None:
            adapters = [e for e in entries.values() if not is_base_entry(e)]
            other = ", ".join(sorted({str(e.get("run_id")) for e in adapters})) or "none recorded"
            notes.append(f"{path.parent.name}/ holds no results of this run's adapters (theirs: run id {other}), "
                         f"ignored")
            continue
        for name, entry in credited.items():
            models.setdefault(name, entry)  # the first folder wins for a model named twice
    return models


def credited_models(entries: dict, run_id: str | None) -> dict | None:
    """The models of one evaluation that belong in this run's row: the base model and this run's
    adapters; None when it holds none of this run's adapters (it belongs to another run)."""
    if run_id is None:
        return entries
    entries = {n: e for n, e in entries.items() if is_base_entry(e) or (e.get("adapter_path") and
                                                                        e.get("run_id") == run_id)}
    return entries if any(not is_base_entry(e) for e in entries.values()) else None


def read_listening(run_dir: Path, run_id: str | None = None) -> str:
    """The blind listening tallies (evaluate.py --tally: summary.json "listening") of the run's
    evaluations, the models credited to this run only; each evaluation's on its own, never pooled
    (their clips differ). Unreadable summaries are read_evaluations' notes, not repeated here."""
    cells = []
    for path in find_evaluation_summaries(run_dir):
        obj = _read_json_quiet(path, [], "")
        listening, entries = (obj or {}).get("listening"), (obj or {}).get("models")
        if not isinstance(listening, dict) or not isinstance(entries, dict):
            continue
        credited = credited_models({n: e for n, e in entries.items() if isinstance(e, dict)}, run_id)
        cell = short_tally(listening, set(credited)) if credited is not None else ""
        if cell:
            cells.append((path.parent.name, cell))
    if len(cells) == 1:
        return cells[0][1]
    return " | ".join(f"{folder}/: {cell}" for folder, cell in cells)


def run_status(run_dir: Path, has_config: bool, has_metrics: bool, running_minutes: float = RUNNING_MINUTES):
    if not run_dir.is_dir():
        return "missing"
    if (run_dir / "logs" / "summary.json").is_file() or (run_dir / "final_model").is_dir():
        return "finished"
    # The newest of the files a live trainer writes: metrics.jsonl, or run_config.json while the
    # model loads and the step-0 validation runs.
    written = [p.stat().st_mtime for p in (run_dir / "logs" / "metrics.jsonl", run_dir / "run_config.json")
               if p.is_file()]
    if written and time.time() - max(written) < running_minutes * 60:
        return "running"
    if has_metrics and has_config:
        return "crashed"
    return "incomplete"


def load_run(run_dir, running_minutes: float = RUNNING_MINUTES) -> Run:
    """Everything readable about one run directory; never raises for missing or broken files."""
    run_dir = Path(run_dir)
    run = Run(path=run_dir, name=run_dir.name or str(run_dir))
    if not run_dir.is_dir():
        run.status = "missing"
        run.notes.append("no such directory")
        return run
    run.config = _read_json_quiet(run_dir / "run_config.json", run.notes, "run_config.json") or {}
    metrics_path = run_dir / "logs" / "metrics.jsonl"
    run.records, notes = read_metrics(metrics_path)
    run.notes += notes
    run.summary = _read_json_quiet(run_dir / "logs" / "summary.json", run.notes, "logs/summary.json") or {}
    run.evaluations = read_evaluations(run_dir, run.notes, run.config.get("run_id"))
    run.listening = read_listening(run_dir, run.config.get("run_id"))
    run.status = run_status(run_dir, bool(run.config), metrics_path.is_file(), running_minutes)
    if not run.config:
        run.notes.append("no run_config.json")
    if not metrics_path.is_file():
        run.notes.append("no logs/metrics.jsonl")
    if run.status in ("crashed", "running") and run.records:
        last = max(r["step"] for r in run.records)
        total = run.config.get("total_steps")
        run.notes.append(f"{'stopped' if run.status == 'crashed' else 'now'} at step {last}"
                         + (f" of {total}" if total else ""))
    return run


def load_runs(paths, running_minutes: float = RUNNING_MINUTES) -> list:
    """load_run for each path; runs sharing a folder name are named by their path instead."""
    runs = [load_run(p, running_minutes) for p in paths]
    names = [r.name for r in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.path)
    return runs


def expand_run_paths(patterns) -> list:
    """Shell-style globs expanded here too, so a quoted 'output_*' works; plain paths pass through."""
    paths = []
    for pattern in patterns:
        if glob.has_magic(str(pattern)):
            matches = sorted(p for p in glob.glob(str(pattern)) if Path(p).is_dir())
            paths += matches
        else:
            paths.append(str(pattern))
    seen, unique = set(), []
    for p in paths:
        key = str(Path(p).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(Path(p))
    return unique


# --- per-run figures -------------------------------------------------------------------------------

def epoch_losses(run: Run):
    """{epoch: mean train loss} and {epoch: epoch-end valid loss} (non-finite values left out)."""
    train, valid = {}, {}
    for r in run.train_records:
        if _finite(r.get("train_loss")) and isinstance(r.get("epoch"), int):
            train.setdefault(r["epoch"], []).append(r["train_loss"])
    for r in run.eval_records:
        if r["step"] > 0 and isinstance(r.get("epoch"), int) and _finite(r.get("valid_loss")):
            valid[r["epoch"]] = r["valid_loss"]  # records are in time order: the last one is the epoch end
    return {e: statistics.fmean(v) for e, v in sorted(train.items())}, dict(sorted(valid.items()))


def base_loss(run: Run):
    for r in run.eval_records:
        if r["step"] == 0 and _finite(r.get("valid_loss")):
            return r["valid_loss"]
    return run.summary.get("base_valid_loss") if _finite(run.summary.get("base_valid_loss")) else None


def best_point(run: Run):
    """(loss, step, epoch) of the lowest validation loss after step 0, or None."""
    evals = [r for r in run.eval_records if r["step"] > 0 and _finite(r.get("valid_loss"))]
    if not evals:
        return None
    best = min(evals, key=lambda r: r["valid_loss"])
    return best["valid_loss"], best["step"], best.get("epoch")


def throughput(run: Run):
    """{'steps_per_s', 'samples_per_s', 'tokens_per_s', 'peak_memory_mb'} from train records (None when unknown).

    Rates are totals over the intervals between consecutive train records of the same epoch (so the
    validation pauses at epoch ends are left out): steps / seconds, and each record's samples/s and
    tokens/s weighted by its interval. A run with one record falls back to its own samples/s.
    """
    recs = [r for r in run.train_records if _finite(r.get("time"))]
    pairs = [(a, b, b["time"] - a["time"]) for a, b in zip(recs, recs[1:])
             if a.get("epoch") == b.get("epoch") and b["time"] > a["time"] and b["step"] > a["step"]]
    seconds = sum(dt for _, _, dt in pairs)

    def rate(key):
        timed = [(b[key], dt) for _, b, dt in pairs if _finite(b.get(key))]
        if timed:
            return sum(v * dt for v, dt in timed) / sum(dt for _, dt in timed)
        vals = [r[key] for r in run.train_records if _finite(r.get(key))]
        return statistics.median(vals) if vals else None

    steps = sum(b["step"] - a["step"] for a, b, _ in pairs) / seconds if pairs else None
    samples = rate("samples_per_s")
    effective_batch = (run.config.get("batch_size") or 0) * (run.config.get("gradient_accumulation_steps") or 0)
    if steps is None and samples and effective_batch:
        steps = samples / effective_batch
    peaks = [r["peak_memory_mb"] for r in run.train_records if _finite(r.get("peak_memory_mb"))]
    return {"steps_per_s": steps, "samples_per_s": samples, "tokens_per_s": rate("tokens_per_s"),
            "peak_memory_mb": max(peaks) if peaks else None}


def verdict_text(name: str, entry: dict) -> str:
    """'final_model: 6/8 fade out' -- evaluate.py's own verdict when given, else built from its counts."""
    verdict = entry.get("verdict")
    if isinstance(verdict, str) and verdict.strip():
        verdict = verdict.strip()
        return verdict if verdict.startswith(name) else f"{name}: {verdict}"  # evaluate.py may name it already
    n = entry.get("num_clips")
    counts = entry.get("flag_counts") if isinstance(entry.get("flag_counts"), dict) else {}
    parts = count_words(counts, n if isinstance(n, int) else None, only_raised=True)
    if parts:
        return f"{name}: " + ", ".join(parts)
    if counts and isinstance(n, int):
        return f"{name}: 0/{n} flagged"
    return f"{name}: no verdict"


# --- the table -------------------------------------------------------------------------------------

def _param_value(run: Run, key: str):
    if key == "warmup":
        return run.warmup_steps
    if key in PATH_KEYS and run.config.get(key):  # one folder spelled two ways is one value
        resolved = recorded_path(run.path, run.config, key)
        return str(resolved) if resolved is not None else run.config.get(key)
    return run.config.get(key)


def precision_of(run: Run) -> str:
    """The precision the run really trained in (older runs recorded only accelerate's mixed_precision)."""
    ran = run.config.get("precision")
    if ran:
        return ran
    mixed = run.config.get("mixed_precision")
    return {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}.get(mixed, "") if mixed else ""


def channels_of(run: Run) -> str:
    """The model's audio channels ("1" mono, "2" stereo); runs from before model_audio_channels was
    recorded are mono; "" without a run_config.json."""
    if not run.config:
        return ""
    channels = run.config.get("model_audio_channels")
    return str(channels) if isinstance(channels, int) and not isinstance(channels, bool) else "1"


def param_columns(runs, show_all: bool = False):
    """Config keys to show: the core ones in the seeds' order, then any other key; only the choices
    that differ between runs (not derived figures such as total_steps) unless show_all; the core
    ones when fewer than two runs have a config."""
    configured = [r for r in runs if r.config]
    other = sorted({k for r in configured for k in r.config} - set(CORE_PARAMS) - NOT_PARAMS)
    keys = list(CORE_PARAMS) + other
    if show_all:
        return [k for k in keys if any(_param_value(r, k) is not None for r in configured)]
    if len(configured) < 2:
        return list(CORE_PARAMS)
    keys = [k for k in keys if not _derived(k)]

    def canon(v):
        return json.dumps(v, sort_keys=True, default=str)

    return [k for k in keys if len({canon(_param_value(r, k)) for r in configured}) > 1]


def _fmt(v, digits=4):
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e6:
            return str(int(v))
        if abs(v) < 1e-2:  # learning rates as people write them: 1e-4, 5e-5
            mantissa, exponent = f"{v:.3e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{v:.{digits}g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def _loss(v):
    return "" if v is None else f"{v:.4f}"


def build_table(runs, show_all: bool = False, wide: bool = False):
    """(header, rows) of strings. wide=True gives one column per epoch (for CSV); otherwise per-epoch
    losses are joined with arrows as in the user's own table."""
    params = param_columns(runs, show_all)
    per_epoch = [epoch_losses(r) for r in runs]
    max_epoch = max([max([*t, *v], default=0) for t, v in per_epoch], default=0)
    header = ["run", "status", "precision", "channels"] + [CORE_PARAMS.get(k, k) for k in params]
    header += ["base valid (ln V)"]
    if wide:
        header += [f"train e{e}" for e in range(1, max_epoch + 1)] + [f"valid e{e}" for e in range(1, max_epoch + 1)]
    else:
        header += ["train loss / epoch", "valid loss / epoch"]
    header += ["best epoch", "best valid", "steps/s", "evaluation"]
    listened = any(r.listening for r in runs)  # the column only once someone has tallied a blind test
    header += ["listening"] if listened else []
    header += ["notes"]
    rows = []
    for run, (train, valid) in zip(runs, per_epoch):
        row = [run.name, run.status, precision_of(run), channels_of(run)] + [_fmt(_param_value(run, k)) for k in params]
        base, ln_v = base_loss(run), run.uniform_loss
        row.append(_loss(base) + (f" ({ln_v:.4f})" if ln_v is not None else ""))
        if wide:
            row += [_loss(train.get(e)) for e in range(1, max_epoch + 1)]
            row += [_loss(valid.get(e)) for e in range(1, max_epoch + 1)]
        else:
            row.append(" → ".join(f"{v:.4f}" for v in train.values()))
            row.append(" → ".join(f"{v:.4f}" for v in valid.values()))
        best = best_point(run)
        row += [str(best[2]) if best else "", _loss(best[0]) if best else ""]
        sps = throughput(run)["steps_per_s"]
        row.append(f"{sps:.3g}" if sps else "")
        row.append("; ".join(verdict_text(n, e) for n, e in run.evaluations.items()))
        if listened:
            row.append(run.listening)
        row.append("; ".join(run.notes))
        rows.append(row)
    return header, rows


def to_markdown(header, rows) -> str:
    def cell(s):
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header, rows) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def to_html(header, rows, title="MusicGen LoRA runs", plot_href=None) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>\n"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
            "td,th{border:1px solid #999;padding:4px 8px;text-align:left;vertical-align:top}"
            "th{background:#eee}</style></head>\n"
            f"<body><h1>{esc(title)}</h1>\n<table id=\"runs\">\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody></table>\n"
            + (f"<p><img src=\"{esc(plot_href)}\" alt=\"validation loss per run\"></p>" if plot_href else "")
            + "</body></html>\n")


def render(runs, fmt: str, show_all: bool = False, plot_href: str | None = None) -> str:
    """The table in 'md', 'csv' or 'html' (the HTML page shows the plot at plot_href, when given)."""
    header, rows = build_table(runs, show_all, wide=fmt == "csv")
    if fmt == "html":
        return to_html(header, rows, plot_href=plot_href)
    return {"md": to_markdown, "csv": to_csv}[fmt](header, rows)


def plot_curves(runs, path: Path) -> Path | None:
    """Validation loss against step for every run on one figure, ln(vocab) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    plotted = False
    for run in runs:
        pts = [(r["step"], r["valid_loss"]) for r in run.eval_records if _finite(r.get("valid_loss"))]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=f"{run.name} ({run.status})")
            plotted = True
    for ln_v in sorted({r.uniform_loss for r in runs if r.uniform_loss is not None}):
        ax.axhline(ln_v, linestyle="--", color="grey")
        ax.annotate(f"ln(vocab) = {ln_v:.3f}", (0, ln_v), textcoords="offset points", xytext=(4, 4), color="grey")
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title("validation loss per run (step 0 = base model)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")

    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=100, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
