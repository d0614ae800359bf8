"""logs/training_curves.png: a run's train and validation loss (and learning rate) over its steps."""
from __future__ import annotations

import math
from pathlib import Path

from musicgen_lora.core.common import log
from musicgen_lora.evaluation.figures import plt, save_png
from musicgen_lora.training.metrics_log import read_metrics

FEW_POINTS = 20


def training_curves_png(metrics_file: Path, out_path: Path) -> Path | None:
    """Train and validation loss (ln(vocab) marked) and learning rate from logs/metrics.jsonl.

    Returns the written path, or None when the log holds nothing to plot yet.
    """
    records, _ = read_metrics(metrics_file)  # a line being written when a crash hit is skipped
    train = [r for r in records if r.get("type") == "train"]
    evals = [r for r in records if r.get("type") == "eval"]
    uniform = next((r["uniform_loss"] for r in reversed(evals) if r.get("uniform_loss") is not None), None)
    if not train and not evals:
        return None
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    if train:
        # A short run logs a point or two: a line through one point draws nothing, so few points get markers.
        few = {"marker": "o", "markersize": 3} if len(train) <= FEW_POINTS else {}
        ax_loss.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train loss",
                     color="tab:blue", linewidth=1, **few)
        ax_lr.plot([r["step"] for r in train], [r["learning_rate"] for r in train], color="tab:green", **few)
    if evals:
        ax_loss.plot([r["step"] for r in evals], [r["valid_loss"] for r in evals], label="validation loss",
                     color="tab:orange", marker="o", markersize=3)
        wrong = [r for r in evals if r.get("valid_loss_wrong_melody") is not None]
        if wrong:  # MusicGen-Melody: the gap to this line is what following the melody is worth
            ax_loss.plot([r["step"] for r in wrong], [r["valid_loss_wrong_melody"] for r in wrong],
                         label="validation loss, a wrong melody", color="tab:purple", marker="x", markersize=3,
                         linestyle=":")
    if uniform is not None and math.isfinite(uniform):
        ax_loss.axhline(uniform, color="red", linestyle="--", linewidth=1,
                        label=f"uniform guess ln(vocab) = {uniform:.2f}")
    ax_loss.set_ylabel("loss (nats/token)")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    save_png(fig, Path(out_path), dpi=100)
    return Path(out_path)


def write_training_curves(output_dir) -> Path | None:
    """logs/training_curves.png for a run dir; a plotting problem is logged, never fatal to training."""
    try:
        return training_curves_png(Path(output_dir) / "logs" / "metrics.jsonl",
                                   Path(output_dir) / "logs" / "training_curves.png")
    except Exception as e:  # noqa: BLE001 - a figure must never end a training run
        log.warning(f"warning: could not draw logs/training_curves.png ({type(e).__name__}: {e})")
        return None

