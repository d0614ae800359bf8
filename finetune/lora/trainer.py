"""The LoRA training loop: one visible loop of get batch, forward, backward, clip, step, log, eval, save.

accelerate carries device placement, mixed precision and gradient accumulation, so the same loop
runs on a CPU, one GPU, or under `accelerate launch`.
"""
import json
import math
import os
import resource
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from common import UserError, atomic_dir, atomic_write_json, log, resolve_device, seed_everything, uniform_loss
from dataset import Collator, MusicDataset, padding_report, read_metadata
from modeling import (apply_lora, batch_loss, count_parameters, evaluate_loss, load_model_and_processor,
                      model_info)
from plotting import write_training_curves

RUN_MARKERS = ("run_config.json", "best_model", "final_model", "checkpoints", "logs")


class MetricsLog:
    """Append-only JSONL of training and validation records (flushed per line, survives crashes)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def check_output_dir(output_dir: Path, overwrite: bool):
    if output_dir.exists() and any((output_dir / m).exists() for m in RUN_MARKERS) and not overwrite:
        raise UserError(f"{output_dir}: already holds a training run; choose a new --output_dir "
                        f"or pass --overwrite_output_dir")


def make_accelerator(args):
    from accelerate import Accelerator

    device = resolve_device(args.device)
    precision = "no"
    if args.fp16 and args.bf16:
        raise UserError("--fp16 and --bf16 exclude each other; pick one")
    if args.fp16 or args.bf16:
        wanted = "fp16" if args.fp16 else "bf16"
        if device == "cpu":
            log.warning(f"warning: --{wanted} needs a GPU; training in fp32 on the CPU instead")
        elif args.bf16 and not torch.cuda.is_bf16_supported():
            log.warning("warning: this GPU has no bf16; training in fp32")
        else:
            precision = wanted
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=args.gradient_accumulation_steps,
                       cpu=device == "cpu")


def save_adapter(model, accelerator, path: Path, extra: dict | None = None):
    """Write a PEFT adapter folder atomically (a kill mid-save keeps the previous one)."""
    if not accelerator.is_main_process:
        return
    with atomic_dir(path) as tmp:
        accelerator.unwrap_model(model).save_pretrained(str(tmp))
        if extra:
            atomic_write_json(tmp / "training_info.json", extra)


def train(args):
    output_dir = Path(args.output_dir)
    check_output_dir(output_dir, getattr(args, "overwrite_output_dir", False))
    window = args.target_duration if args.max_duration is None else min(args.target_duration, args.max_duration)
    if args.max_duration is not None and args.max_duration < args.target_duration:
        log.warning(f"warning: --max_duration {args.max_duration} < --target_duration {args.target_duration}: "
                    f"training on {window} s windows")
    if window <= 0:
        raise UserError("--target_duration must be positive")
    if args.batch_size < 1 or args.gradient_accumulation_steps < 1:
        raise UserError("--batch_size and --gradient_accumulation_steps must be at least 1")

    seed_everything(args.seed)
    splits = read_metadata(args.data_dir, args.metadata_file)
    if not splits["train"]:
        raise UserError(f"{args.data_dir}/{args.metadata_file}: no training clips listed")
    accelerator = make_accelerator(args)
    device = accelerator.device
    model, processor = load_model_and_processor(args.model_path, device="cpu")
    info = model_info(model)
    targets = [t.strip() for t in args.lora_target_modules.split(",") if t.strip()]
    model = apply_lora(model, args.lora_rank, args.lora_alpha, args.lora_dropout, targets)
    trainable, total = count_parameters(model)
    log.info(f"LoRA r={args.lora_rank} alpha={args.lora_alpha} on {','.join(targets)}: "
             f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")

    sr = info["sample_rate"]
    collate = Collator(processor, int(round(window * sr)))
    train_set = MusicDataset(splits["train"], sr, window, train=True, seed=args.seed)
    valid_clips = splits["valid"] or splits["train"][: max(1, len(splits["train"]) // 10)]
    if not splits["valid"]:
        log.warning("warning: metadata has no valid split; validating on a slice of the training clips")
    valid_set = MusicDataset(valid_clips, sr, window, train=False, seed=args.seed)
    pad = padding_report(splits["train"], window)
    if pad["padded_fraction"] is not None:
        log.info(f"train clips: {len(train_set)}, valid clips: {len(valid_set)}; {pad['shorter_than_target']} "
                 f"shorter than {window:g} s -> {100 * pad['padded_fraction']:.1f}% of label frames are padding "
                 f"(masked, never learned)")
        if pad["padded_fraction"] > 0.2:
            log.warning(f"warning: {100 * pad['padded_fraction']:.0f}% of the window is padding; lower "
                        f"--target_duration towards your clips' length")

    loader_gen = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                               collate_fn=collate, num_workers=args.num_workers,
                                               generator=loader_gen, drop_last=False)
    valid_loader = torch.utils.data.DataLoader(valid_set, batch_size=args.batch_size, shuffle=False,
                                               collate_fn=collate, num_workers=args.num_workers)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    total_steps = steps_per_epoch * args.num_epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps) if args.num_epochs else args.max_steps
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, int(0.05 * total_steps))
    if warmup >= total_steps:
        log.warning(f"warning: --warmup_steps {warmup} >= {total_steps} optimizer steps in this run: the "
                    f"learning rate never reaches {args.learning_rate:g}")
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, max(total_steps, 1))
    model, optimizer, train_loader, valid_loader = accelerator.prepare(model, optimizer, train_loader, valid_loader)

    config = {k: v for k, v in vars(args).items()}
    config.update(window_seconds=window, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                  warmup_steps_effective=warmup, trainable_parameters=trainable, total_parameters=total,
                  train_clips=len(train_set), valid_clips=len(valid_set), mixed_precision=accelerator.mixed_precision,
                  device=str(device), uniform_loss=uniform_loss(info["vocab_size"]), **{f"model_{k}": v for k, v in
                                                                                         info.items()})
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output_dir / "run_config.json", config)
    metrics = MetricsLog(output_dir / "logs" / "metrics.jsonl") if accelerator.is_main_process else None
    autocast = accelerator.autocast
    ln_v = uniform_loss(info["vocab_size"])

    # Step 0: the base model's loss (LoRA B starts at zero). Above ln(vocab) means labels or data
    # are wrong, not hyper-parameters -- the seeds' runs sat there.
    t0 = time.time()
    base = evaluate_loss(model, valid_loader, autocast, desc="base valid", progress=not args.no_progress)
    log.info(f"step 0: base validation loss {base['loss']:.4f} (uniform guess ln({info['vocab_size']}) = {ln_v:.4f})")
    if base["loss"] > ln_v:
        log.warning(f"warning: base validation loss {base['loss']:.3f} is above a uniform guess ({ln_v:.3f}): a "
                    f"pretrained MusicGen on in-style audio should sit well below it; check the data and model "
                    f"(random-weight test models sit near it)")
    if metrics:
        metrics.write({"type": "eval", "step": 0, "epoch": 0, "valid_loss": base["loss"],
                       "valid_loss_per_codebook": base["per_codebook"], "uniform_loss": ln_v, "time": 0.0})

    best = {"loss": base["loss"], "step": 0}
    text_gen = torch.Generator().manual_seed(args.seed + 1)
    step, window_loss, window_tokens, window_samples, window_micro = 0, 0.0, 0, 0, 0
    window_start = time.time()
    last_eval = base
    grad_norm = None
    done = False

    def run_eval(epoch):
        nonlocal best, last_eval
        res = evaluate_loss(model, valid_loader, autocast, progress=not args.no_progress)
        last_eval = res
        improved = res["loss"] < best["loss"] or not (output_dir / "best_model").exists()
        msg = f"step {step}: validation loss {res['loss']:.4f}"
        if improved:
            best = {"loss": res["loss"], "step": step}
            save_adapter(model, accelerator, output_dir / "best_model",
                         {"step": step, "epoch": epoch, "valid_loss": res["loss"]})
            msg += " (best so far -> best_model/)"
        log.info(msg)
        if metrics:
            metrics.write({"type": "eval", "step": step, "epoch": epoch, "valid_loss": res["loss"],
                           "valid_loss_per_codebook": res["per_codebook"], "best_valid_loss": best["loss"],
                           "time": time.time() - t0})
            write_training_curves(output_dir)

    model.train()
    for epoch in range(1, args.num_epochs + 1):
        train_set.set_epoch(epoch)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{args.num_epochs}", disable=args.no_progress or not accelerator.is_main_process, leave=False)
        for batch in train_loader:
            with accelerator.accumulate(model):
                with autocast():
                    loss, tokens = batch_loss(model, batch, args.text_dropout, text_gen)
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    grad_norm = float(accelerator.clip_grad_norm_(params, args.max_grad_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window_loss += float(loss.detach())
            window_micro += 1
            window_tokens += tokens
            window_samples += batch["audio"].shape[0]
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            if step % args.logging_steps == 0 or step == total_steps:
                elapsed = max(time.time() - window_start, 1e-9)
                rec = {"type": "train", "step": step, "epoch": epoch, "train_loss": window_loss / window_micro,
                       "learning_rate": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                       "samples_per_s": window_samples / elapsed, "tokens_per_s": window_tokens / elapsed,
                       "peak_memory_mb": peak_memory_mb(device), "time": time.time() - t0}
                bar.set_postfix(loss=f"{rec['train_loss']:.3f}", lr=f"{rec['learning_rate']:.2e}")
                log.info(f"step {step}/{total_steps} epoch {epoch}: train loss {rec['train_loss']:.4f}, "
                         f"lr {rec['learning_rate']:.2e}, {rec['samples_per_s']:.2f} samples/s")
                if metrics:
                    metrics.write(rec)
                window_loss, window_tokens, window_samples, window_micro = 0.0, 0, 0, 0
                window_start = time.time()
            if args.eval_steps and step % args.eval_steps == 0:
                run_eval(epoch)
            if args.save_steps and step % args.save_steps == 0:
                save_adapter(model, accelerator, output_dir / "checkpoints" / f"checkpoint-{step}",
                             {"step": step, "epoch": epoch})
            if step >= total_steps:
                done = True
                break
        bar.close()
        if not (args.eval_steps and step % args.eval_steps == 0 and step > 0):
            run_eval(epoch)
        if done:
            break

    save_adapter(model, accelerator, output_dir / "final_model",
                 {"step": step, "epoch": epoch, "valid_loss": last_eval["loss"]})
    wall = time.time() - t0
    summary = {"base_valid_loss": base["loss"], "best_valid_loss": best["loss"], "best_step": best["step"],
               "final_valid_loss": last_eval["loss"], "steps": step, "epochs": epoch, "wall_seconds": wall,
               "uniform_loss": ln_v}
    if accelerator.is_main_process:
        atomic_write_json(output_dir / "logs" / "summary.json", summary)
        metrics.close()
        write_training_curves(output_dir)
        log.info(f"done in {wall:.1f} s, {step} optimizer steps")
        log.info(f"validation loss: base {base['loss']:.4f} -> best {best['loss']:.4f} (step {best['step']}) -> "
                 f"final {last_eval['loss']:.4f}; uniform guess {ln_v:.4f}")
        log.info(f"best adapter:  {output_dir / 'best_model'}")
        log.info(f"final adapter: {output_dir / 'final_model'}")
    return summary
