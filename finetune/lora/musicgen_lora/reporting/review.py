"""The review gate: a short reading of a run's logs in plain words, each line with the number behind it.

Printed at the end of train_lora.py and by `compare_runs.py --review RUN_DIR`. Levels: `ok`,
`note` (worth knowing, not a fault) and `warn` (look at this before the next round). The thresholds,
also listed in USAGE.md:

- loss above uniform: the step-0 (base model) validation loss above ln(vocab) is a warning -- labels
  or data are wrong, not hyper-parameters -- except for make_tiny_model.py's random-weight models
  (run_config's model_random_weights), where it is a note. Within NEAR_UNIFORM (5%) below it is a note: expected
  for a random-weight test model, a data problem for a pretrained one.
- spikes: a logged train loss more than SPIKE_FACTOR (1.5x) the mean of the previous SPIKE_WINDOW
  (20) finite logged losses, once SPIKE_MIN_HISTORY (3) are known.
- non-finite steps: `{"type": "nonfinite", "step": N}` records, and train/eval records whose loss is
  NaN or infinite (json writes them as NaN / Infinity).
- over-fitting: a validation loss more than OVERFIT_RISE (1%) above the lowest one so far while the
  mean train loss since the previous validation is below the one at that lowest point; the epoch
  where validation turned upward is named.
- not converged: the last validation loss more than CONVERGED (1%) below the one before it.
- warm-up: warm-up at or above the run's optimizer steps (the learning rate never reaches its peak),
  or above WARMUP_SHARE (20%) of them -- and only when the suggested value (about 10% of the steps)
  is smaller, so a run that follows the advice gets no warning.
- throughput: steps/s, samples/s and tokens/s over the logging intervals inside epochs (see
  reporting.table.throughput) and peak memory: always reported, never judged.
- melody (MusicGen-Melody runs): a warning when a wrong melody costs the adapter less than
  training.trainer.MELODY_MARGIN (10%) more held-out loss than each clip's own, or less than half
  of what it costs the base model.
"""
import statistics
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from musicgen_lora.core.common import log
from musicgen_lora.core.outputs import atomic_write_text
from musicgen_lora.reporting.table import Run, _finite, base_loss, best_point, load_run, throughput, verdict_text

NEAR_UNIFORM = 0.05
SPIKE_FACTOR = 1.5
SPIKE_WINDOW = 20
SPIKE_MIN_HISTORY = 3
OVERFIT_RISE = 0.01
CONVERGED = 0.01
WARMUP_SHARE = 0.2


@dataclass
class Finding:
    level: str  # "ok", "note" or "warn"
    text: str

    def __str__(self):
        return f"  {self.level:<4}  {self.text}"


def _last_step(run: Run):
    return max((r["step"] for r in run.records), default=None)


def check_status(run: Run):
    total = run.config.get("total_steps")
    last = _last_step(run)
    of_total = f" of {total}" if total else ""
    if run.status == "missing":
        return [Finding("warn", "no such directory")]
    out = []
    if run.status == "crashed":
        keep = " best_model/ holds the best adapter up to then." if (run.path / "best_model").is_dir() else ""
        out.append(Finding("warn", f"crashed or killed: the logs stop at step {last}{of_total} and there is no "
                                   f"logs/summary.json.{keep}"))
    elif run.status == "running":
        newest = max(p.stat().st_mtime for p in (run.path / "logs" / "metrics.jsonl", run.path / "run_config.json")
                     if p.is_file())
        at = f"at step {last}{of_total}" if last is not None else "no step logged yet"
        out.append(Finding("note", f"still running: {at}, logs written {(time.time() - newest) / 60:.0f} min ago"))
    elif run.status == "incomplete":
        missing = [n for n in ("run_config.json", "logs/metrics.jsonl")
                   if not (run.path / n).is_file()]
        out.append(Finding("warn", f"incomplete: {', '.join(missing) or 'training logs'} missing; nothing to read"))
    out += [Finding("warn", n) for n in run.notes if n.startswith("skipped") or "unreadable" in n]
    return out


def check_step0(run: Run):
    base, ln_v = base_loss(run), run.uniform_loss
    if base is None or ln_v is None:
        return [Finding("note", "no step-0 validation loss logged: cannot compare the base model with ln(vocab)")]
    if base > ln_v and run.config.get("model_random_weights"):
        return [Finding("note", f"step 0: base validation loss {base:.4f} is above ln(vocab) = {ln_v:.4f}, as "
                                f"expected for this random-weight test model (random, confident guesses; a "
                                f"pretrained MusicGen above it would mean labels or data are wrong)")]
    if base > ln_v:
        return [Finding("warn", f"step 0: base validation loss {base:.4f} is above ln(vocab) = {ln_v:.4f}, a "
                                f"uniform guess: labels or data are wrong, not hyper-parameters (a pretrained "
                                f"MusicGen on in-style audio sits well below it)")]
    if base > ln_v * (1 - NEAR_UNIFORM):
        return [Finding("note", f"step 0: base validation loss {base:.4f} is within {NEAR_UNIFORM:.0%} of "
                                f"ln(vocab) = {ln_v:.4f}: expected for a random-weight test model; for a "
                                f"pretrained musicgen-small, check the clips and descriptions")]
    return [Finding("ok", f"step 0: base validation loss {base:.4f} is below ln(vocab) = {ln_v:.4f}: labels "
                          f"and data line up")]


def check_nonfinite(run: Run):
    skipped = sorted({r["step"] for r in run.records if r.get("type") == "nonfinite"} |
                     {r["step"] for r in run.train_records if "train_loss" in r and r["train_loss"] is not None
                      and not _finite(r["train_loss"])})
    bad_evals = [r for r in run.eval_records if r.get("valid_loss") is not None and not _finite(r["valid_loss"])]
    out = []
    if skipped:
        shown = ", ".join(map(str, skipped[:8])) + (" ..." if len(skipped) > 8 else "")
        fp16 = " (or --bf16 instead of --fp16)" if run.config.get("fp16") else ""
        out.append(Finding("warn", f"{len(skipped)} non-finite (NaN/inf) training step(s) at step {shown}: lower "
                                   f"--learning_rate{fp16}; check the clips logged around them"))
    for r in bad_evals:
        out.append(Finding("warn", f"validation loss {r['valid_loss']} at step {r['step']}: the adapter there is "
                                   f"broken; use best_model/ or an earlier checkpoint"))
    if not out and run.records:
        out.append(Finding("ok", "no NaN or infinite losses"))
    return out


def find_spikes(train_records):
    """[(step, loss, running_mean)] for logged losses above SPIKE_FACTOR x the running mean, and the
    largest ratio seen (step, ratio)."""
    history, spikes, largest = deque(maxlen=SPIKE_WINDOW), [], None
    for r in train_records:
        loss = r.get("train_loss")
        if not _finite(loss):
            continue
        if len(history) >= SPIKE_MIN_HISTORY:
            mean = statistics.fmean(history)
            if mean > 0:
                ratio = loss / mean
                if largest is None or ratio > largest[1]:
                    largest = (r["step"], ratio)
                if ratio > SPIKE_FACTOR:
                    spikes.append((r["step"], loss, mean))
        history.append(loss)
    return spikes, largest


def check_spikes(run: Run):
    spikes, largest = find_spikes(run.train_records)
    if spikes:
        shown = "; ".join(f"step {s}: {loss:.4f} = {loss / mean:.1f}x the running mean {mean:.4f}"
                          for s, loss, mean in spikes[:3])
        more = f" (+{len(spikes) - 3} more)" if len(spikes) > 3 else ""
        return [Finding("warn", f"{len(spikes)} loss spike(s) above {SPIKE_FACTOR}x the running mean of the "
                                f"previous {SPIKE_WINDOW} logged losses -- {shown}{more}: if they recur, lower "
                                f"--learning_rate or raise --gradient_accumulation_steps")]
    if largest is None:
        return [Finding("note", f"too few logged train losses to look for spikes (need at least "
                                f"{SPIKE_MIN_HISTORY + 1}; lower --logging_steps)")]
    return [Finding("ok", f"no loss spikes: the largest logged loss was {largest[1]:.2f}x its running mean "
                          f"(step {largest[0]}; threshold {SPIKE_FACTOR}x)")]


def _train_mean(run: Run, after: int, upto: int):
    vals = [r["train_loss"] for r in run.train_records if after < r["step"] <= upto and _finite(r.get("train_loss"))]
    return statistics.fmean(vals) if vals else None


def _where(r):
    return f"epoch {r['epoch']}, step {r['step']}" if r.get("epoch") is not None else f"step {r['step']}"


def check_fit(run: Run):
    evals = [r for r in run.eval_records if r["step"] > 0 and _finite(r.get("valid_loss"))]
    base = base_loss(run)
    out = []
    best = best_point(run)
    if best and base is not None:
        loss, step, epoch = best
        if loss < base:
            pct = 100 * (base - loss) / base
            where = f"best validation loss {loss:.4f} (epoch {epoch}, step {step})"
            out.append(Finding("ok", f"{where} is {pct:.1f}% below the base model's {base:.4f}") if pct >= 0.1 else
                       Finding("note", f"{where} is only {pct:.2g}% below the base model's {base:.4f}: the adapter "
                                       f"has barely moved (too few steps, or a learning rate still in warm-up)"))
        else:
            out.append(Finding("warn", f"the adapter never beat the base model: best validation loss {loss:.4f} "
                                       f"vs base {base:.4f}: too few steps or too low a learning rate, or "
                                       f"validation clips unlike the training ones"))
    if len(evals) < 2:
        if evals:
            out.append(Finding("note", f"one validation point after step 0 ({evals[0]['valid_loss']:.4f}): "
                                       f"over-fitting cannot be judged yet (train more epochs or pass --eval_steps)"))
        return out

    prev_steps = [0] + [r["step"] for r in evals]
    train_means = [_train_mean(run, a, r["step"]) for a, r in zip(prev_steps, evals)]
    low = 0
    for i in range(1, len(evals)):
        v, lowest = evals[i]["valid_loss"], evals[low]["valid_loss"]
        if v > lowest * (1 + OVERFIT_RISE):
            t_low, t_now = train_means[low], train_means[i]
            last = evals[-1]
            if t_low is not None and t_now is not None and t_now < t_low:
                out.append(Finding("warn", f"over-fitting: validation turned upward at {_where(evals[i])} -- from "
                                           f"{lowest:.4f} ({_where(evals[low])}, its lowest) to {v:.4f}"
                                           + (f", {last['valid_loss']:.4f} at the end" if last is not evals[i] else "")
                                           + f" -- while training loss fell {t_low:.4f} -> {t_now:.4f}: keep "
                                           f"best_model/, or train fewer epochs / raise --lora_dropout"))
            elif t_low is not None and t_now is not None:
                out.append(Finding("warn", f"unstable: validation rose {lowest:.4f} -> {v:.4f} at {_where(evals[i])} "
                                           f"and training loss rose too ({t_low:.4f} -> {t_now:.4f}): lower "
                                           f"--learning_rate"))
            else:
                out.append(Finding("warn", f"validation rose from {lowest:.4f} ({_where(evals[low])}) to {v:.4f} "
                                           f"at {_where(evals[i])} (no train loss logged in between to compare)"))
            return out
        if v < lowest:
            low = i
    last, before = evals[-1]["valid_loss"], evals[-2]["valid_loss"]
    if last < before * (1 - CONVERGED):
        out.append(Finding("note", f"validation still falling at the end ({before:.4f} -> {last:.4f}, "
                                   f"{100 * (before - last) / before:.1f}% in the last interval): not converged; "
                                   f"more epochs may help"))
    else:
        out.append(Finding("ok", f"no over-fitting: validation never rose more than {OVERFIT_RISE:.0%} above its "
                                 f"lowest ({evals[low]['valid_loss']:.4f} at {_where(evals[low])}) over "
                                 f"{len(evals)} validations"))
    return out


def suggested_warmup(total_steps: int) -> int:
    """About 10% of the run's optimizer steps (none for a run under 5 steps: there a warm-up step
    only spends an update at learning rate 0)."""
    return int(round(0.1 * total_steps))


def check_warmup(run: Run):
    cfg = run.config
    warmup, spe = run.warmup_steps, cfg.get("steps_per_epoch")
    total = cfg.get("total_steps") or (spe * cfg["num_epochs"] if spe and cfg.get("num_epochs") else None)
    if warmup is None or not total:
        return []
    clips, bs, acc = cfg.get("train_clips"), cfg.get("batch_size"), cfg.get("gradient_accumulation_steps")
    why = (f" ({clips} clips / (batch {bs} x accumulation {acc}) = {spe} steps per epoch)"
           if clips and bs and acc and spe else f" ({spe} per epoch)" if spe else "")
    lr = cfg.get("learning_rate")
    suggest = suggested_warmup(total)
    # Warn only when the advice changes something: a run that follows it gets no warning.
    if warmup >= total and suggest < warmup:
        peak = f"{lr * total / warmup:.2g} of the {lr:g} asked for" if lr else f"{total / warmup:.0%} of its peak"
        return [Finding("warn", f"warm-up {warmup} steps >= the run's {total} optimizer steps{why}: the whole run is "
                                f"warm-up and the learning rate only reaches {peak}; use --warmup_steps "
                                f"{suggest} or train longer")]
    if warmup > WARMUP_SHARE * total and suggest < warmup:
        epochs = f" = {warmup / spe:.1f} epochs" if spe else ""
        return [Finding("warn", f"warm-up {warmup} steps is {warmup / total:.0%} of the run's {total} optimizer "
                                f"steps{why}{epochs}: most of it is spent ramping up; use --warmup_steps "
                                f"{suggest} (about 10%)")]
    return [Finding("ok", f"warm-up {warmup} of {total} optimizer steps ({warmup / total:.0%}){why}")]


def check_throughput(run: Run):
    tp = throughput(run)
    if tp["steps_per_s"] is None and tp["samples_per_s"] is None:
        return []
    parts = []
    if tp["steps_per_s"]:
        parts.append(f"{tp['steps_per_s']:.3g} optimizer steps/s")
    if tp["samples_per_s"]:
        parts.append(f"{tp['samples_per_s']:.3g} samples/s")
    if tp["tokens_per_s"]:
        parts.append(f"{tp['tokens_per_s']:.0f} tokens/s")
    if tp["peak_memory_mb"]:
        parts.append(f"peak memory {tp['peak_memory_mb']:.0f} MB")
    spe = run.config.get("steps_per_epoch")
    epoch = (f"; an epoch of {spe} steps takes about {spe / tp['steps_per_s']:.0f} s of training"
             if spe and tp["steps_per_s"] else "")
    return [Finding("note", "throughput: " + ", ".join(parts) + epoch)]


def check_evaluations(run: Run):
    out = []
    for name, entry in run.evaluations.items():
        counts = entry.get("flag_counts") if isinstance(entry.get("flag_counts"), dict) else {}
        flagged = any(isinstance(c, int) and c > 0 for c in counts.values())
        out.append(Finding("warn" if flagged else "note", "evaluation " + verdict_text(name, entry)))
    return out


def check_melody(run: Run):
    """MusicGen-Melody runs: the trainer's melody check (held-out loss with the clip's own melody vs a
    wrong one; training/trainer.melody_verdict's rule)."""
    check = run.summary.get("melody_check")
    if not isinstance(check, dict) or "follows_melody" not in check:
        return []
    a = check["adapter"]
    text = (f"melody: held-out loss {a['own']:.4f} with each clip's own melody, {a['other']:.4f} with a wrong one "
            f"({100 * (a['other'] - a['own']) / max(a['own'], 1e-9):+.1f}%)")
    if check["follows_melody"]:
        return [Finding("ok", text + ": the adapter follows the melody")]
    return [Finding("warn", text + ": the adapter does not follow the melody (train longer, lower --chroma_dropout)")]


def check_validation(run: Run):
    """Where the validation clips came from (run_config.json "validation", training/trainer.validation_source):
    a run validated on its own training clips cannot show overfitting, so it is never called healthy."""
    source = run.config.get("validation")
    if source == "training clips":
        return [Finding("warn", "validation: on the first tenth of the training clips (the data has no valid split "
                                "and one source track): the validation loss measures memory, not generalisation, "
                                "and best_model is picked by it; add held-out clips to the metadata")]
    if source == "held out":
        return [Finding("note", f"validation: {run.config.get('valid_clips')} clips of whole source tracks held out "
                                f"of training (--valid_ratio {run.config.get('valid_ratio')}: the data has no valid "
                                f"split)")]
    return []


CHECKS = (check_status, check_validation, check_step0, check_nonfinite, check_spikes, check_fit, check_warmup,
          check_throughput, check_melody, check_evaluations)


def review(run: Run):
    """Findings for one run, in reading order, ending with a one-line verdict."""
    findings = [f for check in CHECKS for f in check(run)]
    if run.status == "missing":
        return findings
    warnings = [f for f in findings if f.level == "warn"]
    if warnings:
        findings.append(Finding("warn", f"verdict: {len(warnings)} thing(s) to look at before the next round"))
    elif run.status == "finished":
        findings.append(Finding("ok", "verdict: healthy run -- nothing in the logs needs attention"))
    else:
        findings.append(Finding("note", f"verdict: no problem so far, but the run is {run.status}"))
    return findings


def review_lines(run_dir) -> list:
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    return [f"review of {run.name} ({run.status}):"] + [str(f) for f in review(run)]


REVIEW_FILE = "review.txt"  # in the run's logs/, linked from evaluation reports


def log_review(run_dir):
    """Log the review of a run and keep it as logs/review.txt; advisory, so a fault here never fails
    a finished training."""
    try:
        lines = review_lines(Path(run_dir))
        atomic_write_text(Path(run_dir) / "logs" / REVIEW_FILE, "\n".join(lines) + "\n")
    except Exception as e:  # pragma: no cover - defensive: the adapters are already saved
        log.warning(f"warning: could not review {run_dir} ({type(e).__name__}: {e})")
        return
    for line in lines:
        log.info(line)
