"""logs/metrics.jsonl: a run's append-only record of every train log, validation and skipped step --
the one writer (MetricsLog) and the one reader (read_metrics), which the runs table, the review, the
training-curve plot and the tests all use.

Records are JSON objects with "type" ("train", "eval", "nonfinite") and "step"; Python's json writes
NaN/Infinity for non-finite floats and reads them back. A line cut short by a crash, or any other
malformed line, is skipped by the reader and counted in a note.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from musicgen_lora.core.common import log, parse_json

FILE = Path("logs") / "metrics.jsonl"


class MetricsLog:
    """Appends records (flushed per line, so they survive crashes); mirrors them to accelerate's
    trackers (tensorboard/wandb) when the run reports to any."""

    def __init__(self, path: Path, accelerator=None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.accelerator = accelerator
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.accelerator is not None and self.accelerator.log_with:
            self.accelerator.log(tracker_values(record), step=record["step"])

    def offset(self) -> int:
        """Bytes written so far: a checkpoint records it so a resume can cut the log back to it."""
        return self.file.tell()

    def close(self):
        self.file.close()


def tracker_values(record: dict) -> dict:
    """A record -> `type/name: number` pairs for tensorboard / wandb (they take scalars only)."""
    kind = record.get("type", "train")
    out = {}
    for key, value in record.items():
        if key in ("type", "step") or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[f"{kind}/{key}"] = value
        elif isinstance(value, list) and key == "valid_loss_per_codebook":
            out.update({f"{kind}/valid_loss_codebook_{i}": v for i, v in enumerate(value)})
    return out


def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """(records, notes on what was skipped) of a metrics JSONL; ([], []) when it does not exist."""
    records, bad = [], []
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line)
        except json.JSONDecodeError:
            bad.append(i)
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
        else:
            bad.append(i)
    notes = []
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        notes.append(f"skipped {len(bad)} malformed line(s) of metrics.jsonl (line {shown})")
    return records, notes


def cut_back(metrics_path: Path, checkpoint: Path, offset: int):
    """Cut the log back to what it held when `checkpoint` was written, so records the killed run
    wrote after it (or a torn last line) are not duplicated: the resumed log equals an uninterrupted
    one. Resuming into another output dir copies the source run's records up to that point."""
    source = Path(checkpoint).resolve().parent.parent / FILE
    metrics_path = Path(metrics_path)
    if source.is_file() and source.resolve() != metrics_path.resolve():
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_bytes(source.read_bytes()[:offset])
        return
    if not metrics_path.is_file():
        log.warning(f"warning: {metrics_path} is missing; the resumed run's log starts at the checkpoint")
        return
    size = metrics_path.stat().st_size
    if size < offset:
        log.warning(f"warning: {metrics_path} is shorter than when the checkpoint was written; keeping it as is")
        return
    with open(metrics_path, "r+b") as f:
        f.truncate(offset)
