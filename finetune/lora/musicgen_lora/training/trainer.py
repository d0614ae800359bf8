"""The LoRA training loop: one visible loop of get batch, forward, backward, clip, step, log, eval, save.

accelerate carries device placement, mixed precision, gradient accumulation and multi-process
training, so the same loop runs on a CPU, one GPU, or under `accelerate launch` / `torchrun`.
Checkpoint/resume machinery lives in checkpointing.py, the accelerator and trackers in runtime.py,
the divergence guard and early stopping in guards.py.
"""
import contextlib
import json
import logging
import math
import resource
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import musicgen_lora.training.checkpointing as ckpt
from musicgen_lora.data.code_cache import open_training_cache
from musicgen_lora.common import UserError, log, seed_everything, uniform_loss
from musicgen_lora.data.dataset import Collator, MusicDataset, batch_size_of, padding_report, read_metadata, report_long_descriptions
from musicgen_lora.training.guards import EarlyStopping, NonFiniteGuard, parse_steps
from musicgen_lora.modeling import (apply_lora, batch_loss, count_parameters, evaluate_loss, load_model_and_processor,
                      model_info)
from musicgen_lora.outputs import (DiskFull, atomic_dir, atomic_write_json, disk_full_error, new_run_id, output_lock, read_manifest,
                     write_manifest)
from musicgen_lora.plotting import write_training_curves
from musicgen_lora.runs.table import absolute_paths
from musicgen_lora.training.runtime import (any_across_ranks, enable_gradient_checkpointing, make_accelerator, mean_across_ranks,
                     shard_for_rank, start_trackers, sum_across_ranks, tracker_values)


class MetricsLog:
    """Append-only JSONL of training and validation records (flushed per line, survives crashes),
    mirrored to accelerate's trackers (tensorboard/wandb) when --report_to asks for them."""

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


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def save_adapter(model, accelerator, path: Path, extra: dict | None = None):
    """Write a PEFT adapter folder atomically (a kill mid-save keeps the previous one)."""
    if not accelerator.is_main_process:
        return
    with atomic_dir(path) as tmp:
        accelerator.unwrap_model(model).save_pretrained(str(tmp))
        if extra:
            atomic_write_json(tmp / "training_info.json", extra)


def default_warmup(total_steps: int) -> int:
    """5% of the optimizer steps, rounded: none for a run under 10 steps, where one warm-up step
    would spend the first update at learning rate 0."""
    return int(round(0.05 * total_steps))


def run_config(args, accelerator, run_id: str) -> dict:
    """run_config.json's settings: every flag as parsed, paths made absolute (as typed under
    `as_given`), and the precision and device that really ran (not just what was asked)."""
    config = absolute_paths(vars(args))
    ran = accelerator.mixed_precision if accelerator.mixed_precision in ("fp16", "bf16") else "fp32"
    asked = "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"
    config.update(run_id=run_id, precision=ran, requested_precision=asked, fp16=ran == "fp16", bf16=ran == "bf16",
                  mixed_precision=accelerator.mixed_precision, device=str(accelerator.device),
                  num_processes=accelerator.num_processes)
    return config


def train(args):
    """Run one training; holds the run dir's lock for its whole life (main process)."""
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(args, output_dir)
    with contextlib.ExitStack() as stack:
        if accelerator.is_main_process:  # one writer per run dir: a second train_lora.py stops here
            stack.enter_context(output_lock(output_dir, ckpt.TOOL))
        try:
            return _train(args, accelerator, output_dir)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: say how to go on
            e.hint = ckpt.resume_hint(output_dir)
            raise
        except Exception as e:  # a full disk: the files written before are intact; say how to go on
            full = e if isinstance(e, DiskFull) else disk_full_error(e, output_dir)
            if full is None:
                raise
            raise DiskFull(full.base, f"free some space, then {ckpt.resume_hint(output_dir)}") from None


def _train(args, accelerator, output_dir: Path):
    window = args.target_duration if args.max_duration is None else min(args.target_duration, args.max_duration)
    if args.max_duration is not None and args.max_duration < args.target_duration:
        log.warning(f"warning: --max_duration {args.max_duration} < --target_duration {args.target_duration}: "
                    f"training on {window} s windows")
    # Resolve the checkpoint and check the run dir before anything is loaded or written.
    resume_from = ckpt.resolve_resume_path(output_dir, args.resume_from_checkpoint) \
        if args.resume_from_checkpoint else None
    ckpt.check_output_dir(output_dir, args.overwrite_output_dir, resuming=resume_from is not None)

    seed_everything(args.seed)
    splits = read_metadata(args.data_dir, args.metadata_file)
    if not splits["train"]:
        raise UserError(f"{args.data_dir}/{args.metadata_file}: no training clips listed")
    sample_prompts = []
    if args.sample_every:  # read now: a bad prompts file is one line before the model loads
        from musicgen_lora.generation import load_prompts

        sample_prompts = ([p.text for p in load_prompts(args.sample_prompts)] if args.sample_prompts
                          else [c.description for c in (splits["valid"] or splits["train"])[:3]])
    device = accelerator.device
    main = accelerator.is_main_process
    if not main:  # one copy of every message, from the process that writes the files
        log.setLevel(logging.ERROR)
    model, processor = load_model_and_processor(args.model_path, device="cpu")
    info = model_info(model)
    report_long_descriptions(processor.tokenizer, splits["train"] + splits["valid"])
    targets = [t.strip() for t in args.lora_target_modules.split(",") if t.strip()]
    model = apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, targets)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trainable, total = count_parameters(model)
    log.info(f"LoRA r={args.lora_rank} alpha={args.lora_alpha} on {','.join(targets)}: "
             f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")

    sr = info["sample_rate"]
    hop = info["hop_length"]
    collate = Collator(processor, int(round(window * sr)), hop)
    valid_clips = splits["valid"] or splits["train"][: max(1, len(splits["train"]) // 10)]
    if not splits["valid"]:
        log.warning("warning: metadata has no valid split; validating on a slice of the training clips")
    # Codes come from the on-disk cache (each clip encoded once, ever) unless --no_cache.
    with accelerator.main_process_first():
        code_files = open_training_cache(args, model, sr, {"train": splits["train"], "valid": valid_clips},
                                         device=device, progress=not args.no_progress)
    train_set = MusicDataset(splits["train"], sr, window, train=True, seed=args.seed, hop_length=hop,
                             code_files=code_files["train"])
    valid_set = MusicDataset(valid_clips, sr, window, train=False, seed=args.seed, hop_length=hop,
                             code_files=code_files["valid"])
    pad = padding_report(splits["train"], window)
    if pad["padded_fraction"] is not None:
        log.info(f"train clips: {len(train_set)}, valid clips: {len(valid_set)}; {pad['shorter_than_target']} "
                 f"shorter than {window:g} s -> {100 * pad['padded_fraction']:.1f}% of label frames are padding "
                 f"(masked, never learned)")
        if pad["padded_fraction"] > 0.2:
            log.warning(f"warning: {100 * pad['padded_fraction']:.0f}% of the window is padding; lower "
                        f"--target_duration towards your clips' length")

    # The shuffle of each epoch is drawn from loader_gen; accelerate shards the batches over ranks.
    loader_gen = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                               collate_fn=collate, num_workers=args.num_workers,
                                               generator=loader_gen, drop_last=False)
    valid_loader = torch.utils.data.DataLoader(shard_for_rank(valid_set, accelerator), batch_size=args.batch_size,
                                               shuffle=False, collate_fn=collate, num_workers=args.num_workers)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)  # per rank, after sharding
    total_steps = steps_per_epoch * args.num_epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps) if args.num_epochs else args.max_steps
    warmup = args.warmup_steps if args.warmup_steps is not None else default_warmup(total_steps)
    if warmup >= total_steps:
        log.warning(f"warning: --warmup_steps {warmup} >= {total_steps} optimizer steps in this run: the "
                    f"learning rate never reaches {args.learning_rate:g}")
    from transformers import get_cosine_schedule_with_warmup

    # Not passed to accelerate.prepare: stepped by hand once per optimizer step, whatever the
    # number of processes.
    scheduler = get_cosine_schedule_with_warmup(optimizer.optimizer, warmup, max(total_steps, 1))

    this_run = {"batch_size": args.batch_size, "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "num_processes": accelerator.num_processes, "seed": args.seed}
    if resume_from:
        ckpt.check_resume_compatible(resume_from, ckpt.read_trainer_state(resume_from), this_run)
    # The run id ties everything made from this run (evaluations, samples) to it; a resume keeps it.
    previous = read_manifest(output_dir) or {}
    run_id = previous.get("run_id") if resume_from and previous.get("tool") == ckpt.TOOL else None
    run_id = run_id or (ckpt.read_trainer_state(resume_from).get("run_id") if resume_from else None) or new_run_id()
    config = run_config(args, accelerator, run_id)
    config.update(window_seconds=window, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                  warmup_steps_effective=warmup, trainable_parameters=trainable, total_parameters=total,
                  train_clips=len(train_set), valid_clips=len(valid_set),
                  global_batch_size=args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes,
                  resumed_from=str(Path(resume_from).absolute()) if resume_from else None,
                  uniform_loss=uniform_loss(info["vocab_size"]), **{f"model_{k}": v for k, v in info.items()})
    accelerator.wait_for_everyone()  # every rank has checked the output dir before the first write
    if main:
        if args.overwrite_output_dir and not resume_from:
            ckpt.clear_run(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        for folder in (output_dir, output_dir / ckpt.CHECKPOINTS):
            ckpt.recover_interrupted_saves(folder)
        write_manifest(output_dir, ckpt.TOOL, ckpt.RUN_PATHS, run_id=run_id)
        atomic_write_json(output_dir / "run_config.json", config)
    metrics = None
    if main:
        if resume_from:
            ckpt.restore_metrics_log(output_dir / "logs" / "metrics.jsonl", resume_from,
                                     ckpt.read_trainer_state(resume_from)["metrics_offset"])
        metrics = MetricsLog(output_dir / "logs" / "metrics.jsonl", accelerator)
    start_trackers(accelerator, config, output_dir.name)
    autocast = accelerator.autocast
    ln_v = uniform_loss(info["vocab_size"])
    progress = not args.no_progress and main
    reduce = sum_across_ranks(accelerator)

    best = {"loss": None, "step": 0, "saved": False}
    guard = NonFiniteGuard(args.max_nonfinite_steps)
    stopper = EarlyStopping(args.early_stopping_patience)
    inject_nan = parse_steps(getattr(args, "debug_inject_nan_at_step", None))
    text_gen = torch.Generator().manual_seed(args.seed + 1)
    step, start_epoch, skip_batches, last_eval_step, stop_reason = 0, 1, 0, 0, None
    win = {"loss": 0.0, "micro": 0, "tokens": 0, "samples": 0}  # what the next train record averages
    grad_norm = None
    done = False
    evals_done = 0
    if resume_from:
        state, mine = ckpt.load_checkpoint(resume_from, accelerator, model, optimizer, scheduler)
        step, start_epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]
        base, best, last_eval = {"loss": state["base_valid_loss"]}, state["best"], state["last_eval"]
        last_eval_step, stop_reason = state["last_eval_step"], state["stop_reason"]
        stopper.bad_evals = state["evals_without_improvement"]
        evals_done = state.get("evals_done", 0)
        guard.load(state["nonfinite"])
        t0 = time.time() - state["elapsed_seconds"]
        win = dict(mine["window"])
        window_start = time.time() - win.pop("elapsed")
        text_gen.set_state(mine["text_dropout_rng"])
        loader_gen.set_state(mine["epoch_start_data_order_rng"])  # replays this epoch's shuffle
        ckpt.restore_rng_state(mine["rng"])  # last: nothing below draws before the loop does
        log.info(f"resumed from {resume_from}: step {step}/{total_steps}, epoch {start_epoch}, "
                 f"{skip_batches} batches of this epoch already seen, best validation loss {best['loss']:.4f}")
    else:
        # Step 0: the base model's loss (LoRA B starts at zero). Above ln(vocab) means labels or data
        # are wrong, not hyper-parameters -- the seeds' runs sat there.
        t0 = time.time()
        base = evaluate_loss(model, valid_loader, autocast, desc="base valid", progress=progress, reduce=reduce)
        log.info(f"step 0: base validation loss {base['loss']:.4f} (uniform guess ln({info['vocab_size']}) = "
                 f"{ln_v:.4f})")
        if base["loss"] > ln_v and info["random_weights"]:
            log.info("(a random-weight test model sits at the uniform guess; a pretrained one sits well below)")
        elif base["loss"] > ln_v:
            log.warning(f"warning: base validation loss {base['loss']:.3f} is above a uniform guess ({ln_v:.3f}): "
                        f"a pretrained MusicGen on in-style audio should sit well below it; check the data and "
                        f"model (random-weight test models sit near it)")
        if metrics:
            metrics.write({"type": "eval", "step": 0, "epoch": 0, "valid_loss": base["loss"],
                           "valid_loss_per_codebook": base["per_codebook"], "uniform_loss": ln_v, "time": 0.0})
        best["loss"], last_eval = base["loss"], base
        window_start = time.time()

    def write_samples():
        """Listen to progress: same prompts and seeds at every sampling point (main process only)."""
        from musicgen_lora.generation import generate_audio, write_clip

        folder = output_dir / "samples" / f"step-{step}"
        audio = generate_audio(accelerator.unwrap_model(model), processor, sample_prompts, args.sample_duration,
                               seed=args.seed, batch_size=len(sample_prompts), progress=False)
        for i, (text, clip) in enumerate(zip(sample_prompts, audio)):
            write_clip(folder / f"{i:02d}.wav", clip, sr, {"prompt": text, "step": step, "seed": args.seed,
                                                         "duration": args.sample_duration, "run_id": run_id})
        log.info(f"step {step}: {len(audio)} samples -> {folder}")

    def run_eval(epoch):
        nonlocal best, last_eval, last_eval_step, stop_reason, evals_done
        res = evaluate_loss(model, valid_loader, autocast, progress=progress, reduce=reduce)
        last_eval, last_eval_step = res, step
        improved = res["loss"] < best["loss"] or not best["saved"]
        msg = f"step {step}: validation loss {res['loss']:.4f}"
        if improved:
            best = {"loss": res["loss"], "step": step, "saved": True}
            save_adapter(model, accelerator, output_dir / "best_model",
                         {"step": step, "epoch": epoch, "valid_loss": res["loss"], "run_id": run_id})
            msg += " (best so far -> best_model/)"
        if stopper.update(improved):
            stop_reason = "early_stopping"
            msg += f"; no improvement in {stopper.patience} evaluations: stopping early"
        log.info(msg)
        if metrics:
            metrics.write({"type": "eval", "step": step, "epoch": epoch, "valid_loss": res["loss"],
                           "valid_loss_per_codebook": res["per_codebook"], "best_valid_loss": best["loss"],
                           "time": time.time() - t0})
            write_training_curves(output_dir)
        evals_done += 1
        if main and args.sample_every and evals_done % args.sample_every == 0:
            write_samples()

    def save_checkpoint(epoch, batches_in_epoch, epoch_start_rng):
        state = {"step": step, "epoch": epoch, "batches_in_epoch": batches_in_epoch, "total_steps": total_steps,
                 "base_valid_loss": base["loss"], "best": best, "last_eval": last_eval,
                 "last_eval_step": last_eval_step, "stop_reason": stop_reason,
                 "evals_without_improvement": stopper.bad_evals, "nonfinite": guard.state(),
                 "evals_done": evals_done,
                 "metrics_offset": metrics.offset() if metrics else None, "elapsed_seconds": time.time() - t0,
                 "run": this_run, "run_id": run_id}
        rank_state = {"window": dict(win, elapsed=time.time() - window_start), "text_dropout_rng": text_gen.get_state(),
                      "epoch_start_data_order_rng": epoch_start_rng}
        ckpt.save_checkpoint(output_dir / ckpt.CHECKPOINTS / f"checkpoint-{step}", accelerator, model, optimizer,
                             scheduler, state, rank_state, {"step": step, "epoch": epoch, "run_id": run_id})
        if main:
            ckpt.rotate_checkpoints(output_dir, args.save_total_limit)

    model.train()
    epoch = start_epoch
    for epoch in range(start_epoch, args.num_epochs + 1):
        train_set.set_epoch(epoch)
        # A resumed epoch skips the batches the checkpoint had consumed (same shuffle, replayed).
        epoch_loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        epoch_loader.set_epoch(epoch)  # accelerate passes it on to the dataset: crops depend on the epoch only
        epoch_start_rng = loader_gen.get_state()
        micro_in_epoch, skip_batches = skip_batches, 0
        done = done or step >= total_steps or stop_reason is not None  # a checkpoint from the very end
        bar = tqdm(total=steps_per_epoch, initial=micro_in_epoch // args.gradient_accumulation_steps,
                   desc=f"epoch {epoch}/{args.num_epochs}", disable=not progress, leave=False)
        window_nonfinite = False
        for batch in (() if done else epoch_loader):
            micro_in_epoch += 1
            skipped = False
            with accelerator.accumulate(model):
                with autocast():
                    loss, tokens = batch_loss(model, batch, args.text_dropout, text_gen)
                if step + 1 in inject_nan:  # hidden test hook; the guard below is the real path
                    loss = loss * float("nan")
                loss_finite = bool(torch.isfinite(loss.detach()))
                window_nonfinite |= not loss_finite
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # Clip at +inf when clipping is off: the norm is still needed to spot inf/nan.
                    grad_norm = float(accelerator.clip_grad_norm_(params, args.max_grad_norm or math.inf))
                    skipped = guard.check(not any_across_ranks(accelerator, window_nonfinite), grad_norm)
                    if skipped:  # no gradients -> the optimizer (and fp16 scaler) step changes nothing
                        optimizer.zero_grad(set_to_none=True)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if loss_finite:
                win["loss"] += float(loss.detach())
                win["micro"] += 1
            win["tokens"] += tokens
            win["samples"] += batch_size_of(batch)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            window_nonfinite = False
            bar.update(1)
            if skipped:
                log.warning(f"warning: step {step}: non-finite {'gradient' if loss_finite else 'loss'}; update "
                            f"skipped ({guard.streak} in a row, the run stops at {args.max_nonfinite_steps})")
                if metrics:
                    metrics.write({"type": "nonfinite", "step": step, "epoch": epoch, "loss_finite": loss_finite,
                                   "grad_norm": grad_norm if math.isfinite(grad_norm) else str(grad_norm),
                                   "consecutive": guard.streak, "time": time.time() - t0})
                if guard.exhausted:
                    stop_reason, done = "non-finite", True
                    break
            if step % args.logging_steps == 0 or step == total_steps:
                elapsed = max(time.time() - window_start, 1e-9)
                train_loss = mean_across_ranks(accelerator, win["loss"] / win["micro"] if win["micro"] else math.nan)
                n = accelerator.num_processes
                rec = {"type": "train", "step": step, "epoch": epoch,
                       "train_loss": train_loss if math.isfinite(train_loss) else None,
                       "learning_rate": scheduler.get_last_lr()[0], "grad_norm": grad_norm if math.isfinite(
                           grad_norm) else None, "samples_per_s": n * win["samples"] / elapsed,
                       "tokens_per_s": n * win["tokens"] / elapsed, "peak_memory_mb": peak_memory_mb(device),
                       "time": time.time() - t0}
                bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{rec['learning_rate']:.2e}")
                log.info(f"step {step}/{total_steps} epoch {epoch}: train loss {train_loss:.4f}, "
                         f"lr {rec['learning_rate']:.2e}, {rec['samples_per_s']:.2f} samples/s")
                if metrics:
                    metrics.write(rec)
                win = {"loss": 0.0, "micro": 0, "tokens": 0, "samples": 0}
                window_start = time.time()
            if args.eval_steps and step % args.eval_steps == 0:
                run_eval(epoch)
            if args.save_steps and step % args.save_steps == 0:
                save_checkpoint(epoch, micro_in_epoch, epoch_start_rng)
            if step >= total_steps or stop_reason:
                done = True
                break
        bar.close()
        if last_eval_step != step and stop_reason != "non-finite":
            run_eval(epoch)
        if done or stop_reason:
            break

    if stop_reason != "non-finite":
        save_adapter(model, accelerator, output_dir / "final_model",
                     {"step": step, "epoch": epoch, "valid_loss": last_eval["loss"], "run_id": run_id})
    wall = time.time() - t0
    summary = {"base_valid_loss": base["loss"], "best_valid_loss": best["loss"], "best_step": best["step"],
               "final_valid_loss": last_eval["loss"], "steps": step, "epochs": epoch, "wall_seconds": wall,
               "uniform_loss": ln_v, "stopped_reason": stop_reason or "completed",
               "nonfinite_steps_skipped": guard.total, "resumed_from": str(resume_from) if resume_from else None}
    if main:
        atomic_write_json(output_dir / "logs" / "summary.json", summary)
        metrics.close()
    accelerator.end_training()
    if stop_reason == "non-finite":
        last = ckpt.list_checkpoints(output_dir)
        kept = ([f"{output_dir / 'best_model'} (step {best['step']})"] if best["saved"] else []) + \
               ([f"last good checkpoint {last[-1][1]}"] if last else [])
        raise UserError(f"training stopped at step {step}: {guard.streak} non-finite losses/gradients in a row "
                        f"(--max_nonfinite_steps {args.max_nonfinite_steps}); lower --learning_rate or check the "
                        f"data. Kept: {', '.join(kept) or 'nothing yet'}")
    if main:
        write_training_curves(output_dir)
        log.info(f"done in {wall:.1f} s, {step} optimizer steps"
                 + (" (stopped early: no validation improvement)" if stop_reason == "early_stopping" else ""))
        log.info(f"validation loss: base {base['loss']:.4f} -> best {best['loss']:.4f} (step {best['step']}) -> "
                 f"final {last_eval['loss']:.4f}; uniform guess {ln_v:.4f}")
        log.info(f"best adapter:  {output_dir / 'best_model'}")
        log.info(f"final adapter: {output_dir / 'final_model'}")
        from musicgen_lora.runs.review import log_review  # the review gate: a plain-words reading of the logs just written
        log_review(output_dir)
    return summary
