"""The LoRA training loop: read `run_training` top to bottom -- get a batch, step, and once in a while
log, validate (and sample), save a checkpoint -- each occasional action a small named function.

accelerate carries device placement, mixed precision, gradient accumulation and multi-process
training, so the same loop runs on a CPU, one GPU, or under `accelerate launch` / `torchrun`. What a
run works with is built once by `setup` (a `Run`, never rebound); everything a resume needs lives in
one `TrainState` (training/state.py). Checkpoint files are checkpointing.py's, the metrics log
metrics_log.py's, the accelerator and collectives runtime.py's.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

import musicgen_lora.training.checkpointing as ckpt
from musicgen_lora.audio.chroma import file_chroma, num_chroma_frames
from musicgen_lora.audio.reader import piece_samples
from musicgen_lora.core.common import UserError, log, peak_rss_mb, seed_everything, uniform_loss
from musicgen_lora.core.outputs import (
    DiskFull,
    atomic_dir,
    atomic_write_json,
    disk_full_error,
    new_run_id,
    output_lock,
    read_manifest,
    write_manifest,
)
from musicgen_lora.core.paths import absolute_paths
from musicgen_lora.core.threads import resume_threads, run_threads
from musicgen_lora.data import code_store
from musicgen_lora.data.dataset import Collator, MusicDataset, batch_size_of, check_condition_audio, padding_report
from musicgen_lora.data.metadata import clip_facts, report_long_descriptions, validation_clips
from musicgen_lora.data.splits import load_splits
from musicgen_lora.data.store_update import fill_store, log_fill
from musicgen_lora.generation.generate import generate_audio, write_clip
from musicgen_lora.generation.prompts import Prompt, check_melody_model, load_prompts
from musicgen_lora.generation.sampling import GenerationSettings
from musicgen_lora.model.checkpoint import load_model_and_processor, model_info, model_layout
from musicgen_lora.model.lora import apply_lora, count_parameters
from musicgen_lora.model.loss import batch_loss, evaluate_loss
from musicgen_lora.model.targets import ADAPTER_NAMES
from musicgen_lora.training.config import TrainConfig
from musicgen_lora.training.guards import EarlyStopping, NonFiniteGuard
from musicgen_lora.training.memory import MemoryPlan, check_plan, longest_text_tokens, plan_memory
from musicgen_lora.training.metrics_log import FILE as METRICS_FILE
from musicgen_lora.training.metrics_log import MetricsLog, cut_back
from musicgen_lora.training.runtime import (
    any_across_ranks,
    enable_gradient_checkpointing,
    make_accelerator,
    mean_across_ranks,
    shard_for_rank,
    start_trackers,
    sum_across_ranks,
)
from musicgen_lora.training.state import TrainState, Window


def _nothing(*_args):
    return None


@dataclass
class TrainHooks:
    """What the command layer adds at a run's moments -- training never imports reporting. The
    main process calls them; cli/train.py passes the model card, the curves and the review.

    adapter_saved(path, folder, facts): an adapter is being written to `folder` (the temp folder
    renamed to `path` afterwards; None when the adapter at `path` is brought up to date in place);
    facts: card_facts. validated(run_dir): a validation record was written. finished(run_dir,
    summary): logs/summary.json is written and the run has ended."""

    adapter_saved: Callable[[Path, Path | None, dict], object] = _nothing
    validated: Callable[[Path], object] = _nothing
    finished: Callable[[Path, dict], object] = _nothing


@dataclass
class Run:
    """What one training run works with: built by `setup` (run_id and metrics when the run dir is
    opened), read by the loop and its actions."""

    cfg: TrainConfig
    accelerator: object
    output_dir: Path
    model: object
    processor: object
    info: dict
    params: list
    optimizer: object
    scheduler: object
    train_set: MusicDataset
    valid_set: MusicDataset
    train_loader: object
    valid_loader: object
    data_rng: torch.Generator   # draws each epoch's shuffle
    total_steps: int
    steps_per_epoch: int
    warmup: int
    run_id: str
    resume_from: Path | None
    sample_prompts: list
    metrics: MetricsLog | None  # the main process writes the files; None elsewhere
    memory_plan: MemoryPlan | None = None  # training/memory.py: the estimate logged at the start
    hooks: TrainHooks = field(default_factory=TrainHooks)
    held_out: dict | None = None  # data.splits.hold_out_tracks's record when it made the valid split
    has_valid_split: bool = True  # False: validation_clips took a slice of the training clips

    @property
    def epochs(self) -> int:
        """Epochs the run goes through: --num_epochs, or as many as --max_steps needs."""
        return max(1, math.ceil(self.total_steps / max(self.steps_per_epoch, 1)))

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def progress(self) -> bool:
        return self.main and not self.cfg.no_progress

    @property
    def layout(self) -> dict:
        """The base model's layout, recorded with every adapter and checkpoint (model.checkpoint.check_layout)."""
        return model_layout(self.model)

    @property
    def uniform(self) -> float:
        return uniform_loss(self.info["vocab_size"])


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, hooks: TrainHooks | None = None) -> dict:
    """Train, holding the run dir's lock for the whole run (main process); returns logs/summary.json.
    hooks: what to add at the run's moments (cli/train.py: model cards, curves, the review)."""
    output_dir = Path(cfg.output_dir)
    accelerator = make_accelerator(cfg.device, cfg.requested_precision, cfg.gradient_accumulation_steps,
                                   cfg.report_to, output_dir / "logs")
    with contextlib.ExitStack() as stack:
        if accelerator.is_main_process:  # one writer per run dir: a second train_lora.py stops here
            stack.enter_context(output_lock(output_dir, ckpt.TOOL))
        try:
            return run_training(cfg, accelerator, hooks or TrainHooks())
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: say how to go on
            e.hint = ckpt.resume_hint(output_dir)
            raise
        except Exception as e:  # a full disk: the files written before are intact; say how to go on
            full = e if isinstance(e, DiskFull) else disk_full_error(e, output_dir)
            if full is None:
                raise
            raise DiskFull(full.base, f"free some space, then {ckpt.resume_hint(output_dir)}") from None


def run_training(cfg: TrainConfig, accelerator, hooks: TrainHooks) -> dict:
    run = setup(cfg, accelerator, hooks)
    state = resume(run) if run.resume_from else start(run)
    run.model.train()
    for epoch in range(state.epoch, run.epochs + 1):
        for batch in epoch_batches(run, state, epoch):
            if not train_step(run, state, batch):
                continue  # accumulating micro-batches: no optimizer step yet
            if state.guard.exhausted:
                state.stop_reason = "non-finite"
                break
            if state.step % cfg.logging_steps == 0 or state.step == run.total_steps:
                log_window(run, state)
            if cfg.eval_steps and state.step % cfg.eval_steps == 0:
                validate(run, state)
            if cfg.save_steps and state.step % cfg.save_steps == 0:
                save_checkpoint(run, state)
            if state.finished(run.total_steps):
                break
        if state.last_eval_step != state.step and state.stop_reason != "non-finite":
            validate(run, state)  # every epoch ends validated
        if state.finished(run.total_steps):
            break
    return finish(run, state)


# --------------------------------------------------------------------------------------------
# Setting up
# --------------------------------------------------------------------------------------------
def setup(cfg: TrainConfig, accelerator, hooks: TrainHooks) -> Run:
    """Check the run dir, load data and model, build loaders, optimizer and schedule, open the run dir."""
    output_dir = Path(cfg.output_dir)
    # Before anything is loaded or written: the checkpoint to resume and what the run dir holds.
    resume_from = ckpt.resolve_resume_path(output_dir, cfg.resume_from_checkpoint) if cfg.resume_from_checkpoint \
        else None
    ckpt.check_output_dir(output_dir, cfg.overwrite_output_dir, resuming=resume_from is not None)
    if resume_from:  # CPU results follow the thread count: continue at the one the run recorded
        resume_threads(ckpt.recorded_threads(resume_from, output_dir))
    seed_everything(cfg.seed)
    splits, sample_prompts = load_data(cfg)
    if not accelerator.is_main_process:  # one copy of every message, from the process that writes the files
        log.setLevel(logging.ERROR)
    model, processor, info = load_model(cfg, splits, sample_prompts)
    memory_plan = check_memory(cfg, accelerator, model, processor, splits)  # before any clip is encoded
    if resume_from:  # before any clip is encoded: another base model or batch layout is one line
        ckpt.check_resume_compatible(resume_from, ckpt.read_trainer_state(resume_from),
                                     resume_critical(cfg, accelerator, model))
    train_set, valid_set, train_loader, valid_loader, data_rng = make_loaders(cfg, accelerator, model, processor, info,
                                                                              splits)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    total_steps, steps_per_epoch, warmup, scheduler = make_schedule(cfg, train_loader, optimizer)
    run = Run(cfg, accelerator, output_dir, model, processor, info, params, optimizer, scheduler, train_set,
              valid_set, train_loader, valid_loader, data_rng, total_steps, steps_per_epoch, warmup, "", resume_from,
              sample_prompts, None, memory_plan, hooks, splits.get("held_out"), bool(splits["valid"]))
    open_run_dir(run)
    return run


def load_data(cfg: TrainConfig):
    """The metadata's splits, and the prompts --sample_every will use (read now: a bad prompts file
    is one line before the model loads)."""
    splits = load_splits(cfg.data_dir, cfg.metadata_file, valid_ratio=cfg.valid_ratio, strict_store=cfg.strict_store)
    if cfg.no_cache:
        log.info("note: --no_cache no longer changes anything: every run trains from the code store, which encodes "
                 "each clip once (the flag is kept so older command lines run)")
    if "store" in splits:  # prepare_data.py --codes_only's data
        log.info(code_store.format_summary(splits["store"].dir, code_store.store_summary(splits["store"].dir)))
    if not splits["train"]:
        raise UserError(f"{cfg.data_dir}/{cfg.metadata_file}: no training clips listed")
    held = splits.get("held_out")
    if held:
        log.warning(f"warning: {cfg.data_dir}: no valid split; held out {held['tracks']} of {held['of']} source "
                    f"tracks ({held['clips']} clips, --valid_ratio {held['valid_ratio']:g}) for validation, never "
                    f"trained on")
    elif not splits["valid"]:
        log.warning(f"warning: {cfg.data_dir}: no valid split and "
                    + ("--valid_ratio 0" if not cfg.valid_ratio else "a single source track to hold out")
                    + ": validating on the first tenth of the training clips, so the validation loss measures "
                      "memory, not generalisation (the review will say so); add valid clips to the metadata")
    prompts = []
    if cfg.sample_every:  # a melody model also follows each validation clip's melody (or the prompts file's)
        prompts = (load_prompts(cfg.sample_prompts) if cfg.sample_prompts
                   else [Prompt(f"valid_{i}", c.description, melody=str(c.melody_path))
                         for i, c in enumerate(validation_clips(splits)[:3])])
    return splits, prompts


def load_model(cfg: TrainConfig, splits: dict, sample_prompts: list):
    model, processor = load_model_and_processor(cfg.model_path, device="cpu", decoder_dropout=cfg.decoder_dropout)
    info = model_info(model)
    model_type = model.config.model_type
    for flag in cfg.resolve_conditioning(model_type):
        log.warning(f"warning: {flag} applies to MusicGen-Melody checkpoints; {cfg.model_path} is text-only: ignored")
    if cfg.sample_prompts:
        check_melody_model(sample_prompts, model_type == "musicgen_melody", cfg.model_path,
                           "--model_path", prompts_file=cfg.sample_prompts)
    log.info(f"conditioning dropout: text {cfg.text_dropout}, words {cfg.word_dropout}"
             + (f", melody {cfg.chroma_dropout}" if cfg.chroma_dropout is not None else "")
             + f"; decoder dropout {cfg.decoder_dropout:g}")
    report_long_descriptions(processor.tokenizer, splits["train"] + splits["valid"])
    model = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.targets, cfg.adapter_type)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trainable, total = count_parameters(model)
    log.info(f"{ADAPTER_NAMES[cfg.adapter_type]} r={cfg.lora_rank} alpha={cfg.lora_alpha} on {','.join(cfg.targets)}: "
             f"{trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    return model, processor, info


def check_memory(cfg: TrainConfig, accelerator, model, processor, splits: dict) -> MemoryPlan:
    """Log the memory plan (training/memory.py) for this device; on a GPU it cannot fit, stop with the
    flags that would fit (unless --ignore_memory_plan)."""
    ran = accelerator.mixed_precision if accelerator.mixed_precision in ("fp16", "bf16") else "fp32"
    texts = [c.description for c in splits["train"] + splits["valid"]]
    plan = plan_memory(model, precision=ran, batch_size=cfg.batch_size, window_seconds=cfg.window_seconds,
                       gradient_checkpointing=cfg.gradient_checkpointing, lora_rank=cfg.lora_rank,
                       adapter_type=cfg.adapter_type,
                       targets=cfg.targets, cached=True, lora_dropout=cfg.lora_dropout,
                       text_tokens=longest_text_tokens(processor.tokenizer, texts),
                       device=accelerator.device, gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    log.info(plan.describe())
    check_plan(plan, ignore=cfg.ignore_memory_plan)
    return plan


def make_loaders(cfg: TrainConfig, accelerator, model, processor, info: dict, splits: dict):
    """Datasets over the code store (each clip encoded once, ever, found by its content) and their loaders."""
    window = cfg.window_seconds
    if cfg.max_duration is not None and cfg.max_duration < cfg.target_duration:
        log.warning(f"warning: --max_duration {cfg.max_duration} < --target_duration {cfg.target_duration}: "
                    f"training on {window} s windows")
    sr, hop = info["sample_rate"], info["hop_length"]
    valid_clips = validation_clips(splits, cfg.max_valid_clips)
    melody = info["chroma_length"] is not None
    store = splits.get("store")
    clips = {"train": splits["train"], "valid": valid_clips}
    if store is not None:  # a --codes_only folder: its clips are the store's rows
        check_store(store, model, melody, clips["train"] + clips["valid"])
        chroma_rows = {name: [c.store_index for c in part] if melody else None for name, part in clips.items()}
    else:  # a metadata.json folder: its clips' codes (and chroma) found in the store by content, or encoded
        check_condition_audio(splits["train"] + splits["valid"], melody)
        store_dir = Path(cfg.cache_dir) if cfg.cache_dir else code_store.default_store_dir(cfg.data_dir)
        with accelerator.main_process_first():
            store, clips, chroma_rows, stats = fill_store(store_dir, model, clips, melody, strict=cfg.strict_store,
                                                          progress=not cfg.no_progress, device=accelerator.device)
        log_fill(store_dir, stats)
    layout = {"hop_length": hop, "audio_channels": info["audio_channels"], "chroma": melody, "store": store}
    train_set = MusicDataset(clips["train"], sr, window, train=True, seed=cfg.seed, word_dropout=cfg.word_dropout,
                             merge_tempo_key_p=cfg.merge_tempo_key_p,
                             chroma_rows=chroma_rows["train"], chroma_dropout=cfg.chroma_dropout or 0.0, **layout)
    valid_set = MusicDataset(clips["valid"], sr, window, train=False, seed=cfg.seed,
                             chroma_rows=chroma_rows["valid"], **layout)
    log_padding(splits["train"], window, len(train_set), len(valid_set))
    collate = Collator(processor, int(round(window * sr)), hop, chroma_length=info["chroma_length"])
    # Each epoch's shuffle is drawn from data_rng; accelerate shards the batches over processes.
    data_rng = torch.Generator().manual_seed(cfg.seed)
    # Pinned host memory on a GPU: the batch's copy to the device can overlap the step (accelerate copies
    # with non_blocking=True, runtime.make_accelerator).
    pin = accelerator.device.type == "cuda"
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, pin_memory=pin,
                                               collate_fn=collate, num_workers=cfg.num_workers,
                                               generator=data_rng, drop_last=False)
    valid_loader = torch.utils.data.DataLoader(shard_for_rank(valid_set, accelerator), batch_size=cfg.batch_size,
                                               pin_memory=pin,
                                               shuffle=False, collate_fn=collate, num_workers=cfg.num_workers)
    return train_set, valid_set, train_loader, valid_loader, data_rng


def check_store(store, model, melody: bool, clips: list):
    """The store's codes must come from this model's codec, settings and layout (code_store.StoreKey),
    and hold chroma for a melody model."""
    want = code_store.StoreKey.for_model(model)
    differs = want.differences(asdict(store.key))
    if differs:
        raise UserError(f"{store.dir}: its codes were made with another codec or settings ({'; '.join(differs)}); "
                        f"run prepare_data.py --codes_only --model_path with the model you train into a new "
                        f"--output_dir")
    lacking = [c for c in clips if not store.has_chroma(c.store_index)]
    if melody and lacking:
        raise UserError(f"{store.dir}: {len(lacking)} clip(s) have no chroma in this --codes_only store, and "
                        f"MusicGen-Melody trains on each clip's chroma; prepare the data as WAVs (prepare_data.py "
                        f"without --codes_only): train_lora.py then stores their codes with chroma")


def log_padding(train_clips, window: float, n_train: int, n_valid: int):
    pad = padding_report(train_clips, window)
    if pad["padded_fraction"] is None:
        return
    log.info(f"train clips: {n_train}, valid clips: {n_valid}; {pad['shorter_than_target']} shorter than "
             f"{window:g} s -> {100 * pad['padded_fraction']:.1f}% of label frames are padding (masked, never "
             f"learned)")
    if pad["padded_fraction"] > 0.2:
        log.warning(f"warning: {100 * pad['padded_fraction']:.0f}% of the window is padding; lower "
                    f"--target_duration towards your clips' length")


def default_warmup(total_steps: int) -> int:
    """5% of the optimizer steps, rounded: none for a run under 10 steps, where one warm-up step
    would spend the first update at learning rate 0."""
    return int(round(0.05 * total_steps))


def make_schedule(cfg: TrainConfig, train_loader, optimizer):
    """(total steps, steps per epoch, warm-up steps, cosine schedule). The scheduler is stepped by
    hand once per optimizer step, whatever the number of processes (not given to accelerate)."""
    from transformers import get_cosine_schedule_with_warmup

    steps_per_epoch = math.ceil(len(train_loader) / cfg.gradient_accumulation_steps)  # per process
    total_steps = steps_per_epoch * cfg.num_epochs
    if cfg.max_steps:  # as transformers' Trainer: --max_steps wins over --num_epochs, either way
        total_steps = cfg.max_steps
        log.info(f"--max_steps {cfg.max_steps}: {cfg.max_steps} optimizer steps = "
                 f"{cfg.max_steps / steps_per_epoch:.3g} epochs of {steps_per_epoch} steps (--num_epochs is not used)")
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup(total_steps)
    if warmup >= total_steps:
        log.warning(f"warning: --warmup_steps {warmup} >= {total_steps} optimizer steps in this run: the "
                    f"learning rate never reaches {cfg.learning_rate:g}")
    scheduler = get_cosine_schedule_with_warmup(optimizer.optimizer, warmup, max(total_steps, 1))
    return total_steps, steps_per_epoch, warmup, scheduler


def resume_critical(cfg: TrainConfig, accelerator, model) -> dict:
    return {**cfg.resume_critical, "num_processes": accelerator.num_processes, "model": model_layout(model)}


def open_run_dir(run: Run):
    """Settle the run id (a resume keeps it: it ties evaluations and samples to the run), write the
    manifest and run_config.json, open the metrics log (cut back to the checkpoint on a resume)."""
    previous = read_manifest(run.output_dir) or {}
    run.run_id = (previous.get("run_id") if run.resume_from and previous.get("tool") == ckpt.TOOL else None) or \
        (ckpt.read_trainer_state(run.resume_from).get("run_id") if run.resume_from else None) or new_run_id()
    config = run_config(run)
    run.accelerator.wait_for_everyone()  # every process has checked the output dir before the first write
    if run.main:
        if run.cfg.overwrite_output_dir and not run.resume_from:
            ckpt.clear_run(run.output_dir)
        run.output_dir.mkdir(parents=True, exist_ok=True)
        for folder in (run.output_dir, run.output_dir / ckpt.CHECKPOINTS):
            ckpt.recover_interrupted_saves(folder)
        write_manifest(run.output_dir, ckpt.TOOL, ckpt.RUN_PATHS, run_id=run.run_id)
        atomic_write_json(run.output_dir / "run_config.json", config)
        if run.resume_from:
            cut_back(run.output_dir / METRICS_FILE, run.resume_from,
                     ckpt.read_trainer_state(run.resume_from)["metrics_offset"])
        run.metrics = MetricsLog(run.output_dir / METRICS_FILE, run.accelerator)
    start_trackers(run.accelerator, config, run.output_dir.name)


def validation_source(run: Run) -> str:
    """Where the validation clips came from: "valid split" (the data's own), "held out" (whole source
    tracks taken out of training: data.splits.hold_out_tracks) or "training clips" (data of one track:
    the loss then measures memory, and the review says so)."""
    if run.held_out:
        return "held out"
    return "valid split" if run.has_valid_split else "training clips"


def run_config(run: Run) -> dict:
    """run_config.json: every setting (paths absolute, as typed under `as_given`), the precision and
    device that really ran (not just what was asked), and what the run derived from them."""
    cfg, acc = run.cfg, run.accelerator
    trainable, total = count_parameters(run.model)
    ran = acc.mixed_precision if acc.mixed_precision in ("fp16", "bf16") else "fp32"
    config = absolute_paths(cfg.to_dict())
    config.update(run_id=run.run_id, precision=ran, requested_precision=cfg.requested_precision,
                  fp16=ran == "fp16", bf16=ran == "bf16", mixed_precision=acc.mixed_precision, device=str(acc.device),
                  num_processes=acc.num_processes, **run_threads(), window_seconds=cfg.window_seconds,
                  total_steps=run.total_steps,
                  steps_per_epoch=run.steps_per_epoch, warmup_steps_effective=run.warmup,
                  trainable_parameters=trainable, total_parameters=total, train_clips=len(run.train_set),
                  valid_clips=len(run.valid_set), validation=validation_source(run),
                  global_batch_size=cfg.batch_size * cfg.gradient_accumulation_steps * acc.num_processes,
                  resumed_from=str(Path(run.resume_from).absolute()) if run.resume_from else None,
                  uniform_loss=run.uniform, **{f"model_{k}": v for k, v in run.info.items()},
                  memory_plan_gib=round(run.memory_plan.total / 2**30, 2) if run.memory_plan else None)
    return config


# --------------------------------------------------------------------------------------------
# Starting, resuming
# --------------------------------------------------------------------------------------------
def new_state(run: Run) -> TrainState:
    return TrainState(guard=NonFiniteGuard(run.cfg.max_nonfinite_steps),
                      stopper=EarlyStopping(run.cfg.early_stopping_patience),
                      text_rng=torch.Generator().manual_seed(run.cfg.seed + 1))


def start(run: Run) -> TrainState:
    """A new run: step 0 is the base model's validation loss (LoRA B starts at zero). Above ln(vocab)
    means labels or data are wrong, not hyper-parameters -- the seeds' runs sat there."""
    state = new_state(run)
    base = held_out(run, desc="base valid")
    wrong = wrong_melody_loss(run)
    ln_v = run.uniform
    log.info(f"step 0: base validation loss {base['loss']:.4f} (uniform guess ln({run.info['vocab_size']}) = "
             f"{ln_v:.4f})")
    if base["loss"] > ln_v and run.info["random_weights"]:
        log.info("(a random-weight test model sits at the uniform guess or above; a pretrained one sits well below)")
    elif base["loss"] > ln_v:
        log.warning(f"warning: base validation loss {base['loss']:.3f} is above a uniform guess ({ln_v:.3f}): a "
                    f"pretrained MusicGen on in-style audio should sit well below it; check the data and model "
                    f"(random-weight test models sit near it)")
    if run.metrics:
        run.metrics.write({"type": "eval", "step": 0, "epoch": 0, "valid_loss": base["loss"],
                           "valid_loss_per_codebook": base["per_codebook"], "uniform_loss": ln_v,
                           **({"valid_loss_wrong_melody": wrong} if wrong is not None else {}), "time": 0.0})
    state.base_loss, state.last_eval = base["loss"], base
    state.best["loss"] = base["loss"]
    state.window = Window()
    return state


def resume(run: Run) -> TrainState:
    """Restore weights, optimizer, schedule, scaler and the whole TrainState from a checkpoint."""
    state = new_state(run)
    shared, mine = ckpt.load_checkpoint(run.resume_from, run.accelerator, run.model, run.optimizer, run.scheduler)
    state.load_state_dict(shared, mine)
    run.data_rng.set_state(state.epoch_start_data_rng)  # replays this epoch's shuffle
    ckpt.restore_rng_state(mine["rng"])  # last: nothing below draws before the loop does
    log.info(f"resumed from {run.resume_from}: step {state.step}/{run.total_steps}, epoch {state.epoch}, "
             f"{state.batches_in_epoch} batches of this epoch already seen, best validation loss "
             f"{state.best['loss']:.4f}")
    return state


# --------------------------------------------------------------------------------------------
# One epoch, one step
# --------------------------------------------------------------------------------------------
def epoch_batches(run: Run, state: TrainState, epoch: int):
    """The epoch's micro-batches -- none when the run is already done (a checkpoint from its very end);
    a resumed epoch skips the ones its checkpoint had consumed (same shuffle, replayed). Keeps
    state.epoch / batches_in_epoch / epoch_start_data_rng current and the progress bar moving."""
    skip = state.batches_in_epoch if epoch == state.epoch else 0
    run.train_set.set_epoch(epoch)
    loader = run.accelerator.skip_first_batches(run.train_loader, skip) if skip else run.train_loader
    loader.set_epoch(epoch)  # accelerate passes it on to the dataset: crops depend on the epoch only
    state.epoch, state.batches_in_epoch = epoch, skip
    state.epoch_start_data_rng = run.data_rng.get_state()
    if state.finished(run.total_steps):
        return
    bar = tqdm(total=run.steps_per_epoch, initial=skip // run.cfg.gradient_accumulation_steps,
               desc=f"epoch {epoch}/{run.epochs}", disable=not run.progress, leave=False)
    try:
        for batch in loader:
            state.batches_in_epoch += 1
            seen = state.step
            yield batch
            bar.update(state.step - seen)
    finally:
        bar.close()


def train_step(run: Run, state: TrainState, batch) -> bool:
    """One micro-batch: forward and backward; at the accumulation boundary, clip and update -- or skip
    the update when a loss or the gradient is not finite (the guard counts it). Returns True when an
    optimizer step was taken (state.step moved on)."""
    acc, cfg = run.accelerator, run.cfg
    skipped = all_finite = False
    with acc.accumulate(run.model):
        with acc.autocast():
            loss, tokens = batch_loss(run.model, batch, cfg.text_dropout, state.text_rng)
        # No host sync per micro-batch (a .item() stalls a GPU's queue every time): the loss stays on the
        # device until the accumulation boundary, where one transfer brings back every micro-batch's loss
        # and the gradient norm together.
        state.pending.append((loss.detach().float(), tokens, batch_size_of(batch)))
        acc.backward(loss)
        if acc.sync_gradients:
            # Clip at +inf when clipping is off: the norm is still needed to spot inf/nan.
            norm = acc.clip_grad_norm_(run.params, cfg.max_grad_norm or math.inf)
            values = torch.stack([x for x, _, _ in state.pending] +
                                 [torch.as_tensor(norm, dtype=torch.float32, device=loss.device)]).tolist()
            state.grad_norm = values[-1]
            for (_, n_tokens, n_samples), value in zip(state.pending, values):
                state.window.add(value if math.isfinite(value) else None, n_tokens, n_samples)
            all_finite = all(math.isfinite(v) for v in values[:-1])
            state.pending.clear()
            skipped = state.guard.check(not any_across_ranks(acc, not all_finite), state.grad_norm)
            if skipped:  # no gradients -> the optimizer (and fp16 scaler) step changes nothing
                run.optimizer.zero_grad(set_to_none=True)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    if not acc.sync_gradients:
        return False
    run.scheduler.step()
    state.step += 1
    if skipped:
        report_skipped(run, state, all_finite)
    return True


# --------------------------------------------------------------------------------------------
# Once in a while
# --------------------------------------------------------------------------------------------
def report_skipped(run: Run, state: TrainState, loss_finite: bool):
    log.warning(f"warning: step {state.step}: non-finite {'gradient' if loss_finite else 'loss'}; update skipped "
                f"({state.guard.streak} in a row, the run stops at {run.cfg.max_nonfinite_steps})")
    if run.metrics:
        norm = state.grad_norm
        run.metrics.write({"type": "nonfinite", "step": state.step, "epoch": state.epoch, "loss_finite": loss_finite,
                           "grad_norm": norm if math.isfinite(norm) else str(norm), "consecutive": state.guard.streak,
                           "time": state.elapsed})


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()  # this process's own peak, not a launcher's (common.rss_mb)


def log_window(run: Run, state: TrainState):
    """A `train` record: mean loss, throughput and learning rate since the last one (all processes)."""
    acc, win = run.accelerator, state.window
    elapsed = max(time.time() - win.started, 1e-9)
    train_loss = mean_across_ranks(acc, win.loss / win.micro if win.micro else math.nan)
    n, norm = acc.num_processes, state.grad_norm
    rec = {"type": "train", "step": state.step, "epoch": state.epoch,
           "train_loss": train_loss if math.isfinite(train_loss) else None,
           "learning_rate": run.scheduler.get_last_lr()[0],
           "grad_norm": norm if norm is not None and math.isfinite(norm) else None,
           "samples_per_s": n * win.samples / elapsed, "tokens_per_s": n * win.tokens / elapsed,
           "peak_memory_mb": peak_memory_mb(acc.device), "time": state.elapsed}
    log.info(f"step {state.step}/{run.total_steps} epoch {state.epoch}: train loss {train_loss:.4f}, "
             f"lr {rec['learning_rate']:.2e}, {rec['samples_per_s']:.2f} samples/s")
    if run.metrics:
        run.metrics.write(rec)
    state.window = Window()


def held_out(run: Run, melody: str = "own", desc: str = "valid") -> dict:
    """evaluate_loss on the validation set (all processes), MusicGen-Melody windows conditioned on
    `melody` (MusicDataset.MELODY_MODES: each clip's own, none, or a wrong one)."""
    run.valid_set.melody = melody
    try:
        return evaluate_loss(run.model, run.valid_loader, run.accelerator.autocast, desc=desc,
                             progress=run.progress and melody == "own", reduce=sum_across_ranks(run.accelerator))
    finally:
        run.valid_set.melody = "own"


def wrong_melody_loss(run: Run) -> float | None:
    """MusicGen-Melody: the held-out loss with a wrong melody, logged beside every validation loss so
    the gap an adapter that follows the melody opens is seen growing (None for text-only MusicGen)."""
    return held_out(run, "other")["loss"] if run.info["chroma_length"] is not None else None


def validate(run: Run, state: TrainState):
    """Validation loss (and, for MusicGen-Melody, the wrong-melody loss); a new best is saved as
    best_model/; early stopping counts; samples every --sample_every validations."""
    res = held_out(run)
    wrong = wrong_melody_loss(run)
    state.last_eval, state.last_eval_step = res, state.step
    improved = res["loss"] < state.best["loss"] or not state.best["saved"]
    msg = f"step {state.step}: validation loss {res['loss']:.4f}"
    if wrong is not None:
        msg += f" (a wrong melody: {wrong:.4f})"
    if improved:
        state.best = {"loss": res["loss"], "step": state.step, "saved": True}
        save_adapter(run, run.output_dir / "best_model", res["loss"], state)
        msg += " (best so far -> best_model/)"
    if state.stopper.update(improved):
        state.stop_reason = "early_stopping"
        msg += f"; no improvement in {state.stopper.patience} evaluations: stopping early"
    log.info(msg)
    if run.metrics:
        run.metrics.write({"type": "eval", "step": state.step, "epoch": state.epoch, "valid_loss": res["loss"],
                           "valid_loss_per_codebook": res["per_codebook"], "best_valid_loss": state.best["loss"],
                           **({"valid_loss_wrong_melody": wrong} if wrong is not None else {}),
                           "time": state.elapsed})
        run.hooks.validated(run.output_dir)
    state.evals_done += 1
    if run.main and run.cfg.sample_every and state.evals_done % run.cfg.sample_every == 0:
        write_samples(run, state)


def write_samples(run: Run, state: TrainState):
    """Listen to progress: the same prompts and seeds at every sampling point (main process only)."""
    cfg, folder = run.cfg, run.output_dir / "samples" / f"step-{state.step}"
    sr, prompts = run.info["sample_rate"], run.sample_prompts
    melody = run.info["chroma_length"] is not None
    # The melody's first sample_duration seconds, as a training window's chroma is taken.
    chroma = [file_chroma(p.melody, sr, piece_samples(sr, run.info["hop_length"]), 0,
                          num_chroma_frames(int(cfg.sample_duration * sr))) if p.melody else None
              for p in prompts] if melody else None
    audio = generate_audio(run.accelerator.unwrap_model(run.model), run.processor, [p.text for p in prompts],
                           GenerationSettings(cfg.sample_duration, batch_size=len(prompts)), seed=cfg.seed,
                           progress=False, chroma=chroma)
    for i, (prompt, clip) in enumerate(zip(prompts, audio)):
        write_clip(folder / f"{i:02d}.wav", clip, sr,
                   {"prompt": prompt.text, "step": state.step, "seed": cfg.seed, "duration": cfg.sample_duration,
                    "run_id": run.run_id, **({"melody": prompt.melody} if melody and prompt.melody else {})})
    log.info(f"step {state.step}: {len(audio)} samples -> {folder}")


def save_adapter(run: Run, path: Path, valid_loss: float, state: TrainState):
    """A PEFT adapter folder, written atomically (a kill mid-save keeps the previous one)."""
    if not run.main:
        return
    with atomic_dir(path) as tmp:
        run.accelerator.unwrap_model(run.model).save_pretrained(str(tmp))
        atomic_write_json(tmp / "training_info.json", {"step": state.step, "epoch": state.epoch,
                                                       "valid_loss": valid_loss, "run_id": run.run_id,
                                                       "model": run.layout})
        run.hooks.adapter_saved(path, tmp, card_facts(run, state))  # the model card, inside the same rename
    if path.name == "final_model" and (run.output_dir / "best_model").is_dir():
        best = run.output_dir / "best_model"
        run.hooks.adapter_saved(best, None, card_facts(run, state))  # the run's end, now known


def card_facts(run: Run, state: TrainState) -> dict:
    """What an adapter's model card takes from the running trainer: the losses so far (summary.json
    is not written yet) and the clips of each split."""
    outcome = {"base_valid_loss": state.base_loss, "best_step": state.best["step"], "uniform_loss": run.uniform,
               "steps": state.step, "epochs": state.epoch, "total_steps": run.total_steps,
               "best_valid_loss": state.best["loss"] if state.best.get("saved") else None}
    if state.finished(run.total_steps):  # final_model (or the last validation): the run's end is known
        outcome.update(final_valid_loss=state.last_eval["loss"], stopped_reason=state.stop_reason or "completed",
                       finished=True)
    data = {"train": clip_facts(run.train_set.clips), "valid": clip_facts(run.valid_set.clips),
            # validation_clips() slices the training list when there is no valid split to hold out
            "valid_from_train": not run.has_valid_split}
    return {"outcome": outcome, "data": data}


def save_checkpoint(run: Run, state: TrainState):
    """checkpoints/checkpoint-N: the adapter, optimizer, schedule and the whole TrainState (every process)."""
    shared = {**state.state_dict(), "total_steps": run.total_steps, **run_threads(),
              "run": resume_critical(run.cfg, run.accelerator, run.model),
              "run_id": run.run_id, "metrics_offset": run.metrics.offset() if run.metrics else None}
    ckpt.save_checkpoint(run.output_dir / ckpt.CHECKPOINTS / f"checkpoint-{state.step}", run.accelerator, run.model,
                         run.optimizer, run.scheduler, shared, state.rank_state_dict(),
                         {"step": state.step, "epoch": state.epoch, "run_id": run.run_id, "model": run.layout})
    if run.main:
        ckpt.rotate_checkpoints(run.output_dir, run.cfg.save_total_limit)


# --------------------------------------------------------------------------------------------
# Finishing
# --------------------------------------------------------------------------------------------
def finish(run: Run, state: TrainState) -> dict:
    """final_model/ (unless the run diverged), logs/summary.json, the curves, and the review."""
    if state.stop_reason != "non-finite":
        save_adapter(run, run.output_dir / "final_model", state.last_eval["loss"], state)
    summary = {"base_valid_loss": state.base_loss, "best_valid_loss": state.best["loss"],
               "best_step": state.best["step"], "final_valid_loss": state.last_eval["loss"], "steps": state.step,
               "epochs": state.epoch, "wall_seconds": state.elapsed, "uniform_loss": run.uniform,
               "stopped_reason": state.stop_reason or "completed", "nonfinite_steps_skipped": state.guard.total,
               "resumed_from": str(run.resume_from) if run.resume_from else None,
               "melody_check": melody_check(run) if state.stop_reason != "non-finite" else None}
    if run.main:
        atomic_write_json(run.output_dir / "logs" / "summary.json", summary)
        run.metrics.close()
    run.accelerator.wait_for_everyone()  # leave together: a process exiting mid-teardown can abort its peer
    run.accelerator.end_training()
    if state.stop_reason == "non-finite":
        raise UserError(diverged_message(run, state))
    if run.main:
        report_end(run, state, summary)
    return summary


def melody_check(run: Run) -> dict | None:
    """MusicGen-Melody: the held-out loss of the trained adapter and of the base model with each
    clip's own melody, with none (the null chroma) and with a wrong one (another clip's; dataset.py's
    "other"), and whether the adapter follows the melody (melody_verdict)."""
    if run.info["chroma_length"] is None:
        return None
    model = run.accelerator.unwrap_model(run.model)
    out = {}
    for who, ctx in (("adapter", contextlib.nullcontext), ("base", model.disable_adapter)):
        with ctx():
            out[who] = {mode: held_out(run, mode)["loss"] for mode in MusicDataset.MELODY_MODES}
    a, b = out["adapter"], out["base"]
    out["melody_gain"] = {"adapter": a["other"] - a["own"], "base": b["other"] - b["own"]}
    out["follows_melody"], why = melody_verdict(out)
    log.info(f"melody check (held-out loss): own melody {a['own']:.4f}, a wrong one {a['other']:.4f}, none "
             f"{a['none']:.4f}; base model {b['own']:.4f} / {b['other']:.4f} / {b['none']:.4f}: {why}")
    if not out["follows_melody"]:
        log.warning("warning: the adapter does not follow the melody (train longer, lower --chroma_dropout, or "
                    "check condition_audio)")
    return out


# An adapter follows the melody when a wrong melody costs it at least this share more held-out loss
# than its own (the base model's own share, when a pretrained base already follows the melody better).
# Measured: an adapter that ignored the chroma (decoder dropout 0.1, bbd0796) paid 1.3% for a wrong
# melody; ones that learned it paid 9x-86x.
MELODY_MARGIN = 0.10


def melody_verdict(check: dict) -> tuple[bool, str]:
    """(follows, the reason in words) from melody_check's losses: the wrong melody must cost the
    adapter MELODY_MARGIN more than its own, and at least half of what it costs the base model (an
    adapter must not unlearn what a pretrained melody model already does)."""
    a, b = check["adapter"], check["base"]
    share = (a["other"] - a["own"]) / max(a["own"], 1e-9)
    base_share = max((b["other"] - b["own"]) / max(b["own"], 1e-9), 0.0)
    need = max(MELODY_MARGIN, 0.5 * base_share)
    verdict = "follows the melody" if share >= need else "does not follow the melody"
    return share >= need, f"a wrong melody costs {100 * share:.1f}% more (needed {100 * need:.0f}%): {verdict}"


def diverged_message(run: Run, state: TrainState) -> str:
    last = ckpt.list_checkpoints(run.output_dir)
    kept = ([f"{run.output_dir / 'best_model'} (step {state.best['step']})"] if state.best["saved"] else []) + \
           ([f"last good checkpoint {last[-1][1]}"] if last else [])
    return (f"training stopped at step {state.step}: {state.guard.streak} non-finite losses/gradients in a row "
            f"(--max_nonfinite_steps {run.cfg.max_nonfinite_steps}); lower --learning_rate or check the data. "
            f"Kept: {', '.join(kept) or 'nothing yet'}")


def report_end(run: Run, state: TrainState, summary: dict):
    log.info(f"done in {summary['wall_seconds']:.1f} s, {state.step} optimizer steps"
             + (" (stopped early: no validation improvement)" if state.stop_reason == "early_stopping" else ""))
    log.info(f"validation loss: base {state.base_loss:.4f} -> best {state.best['loss']:.4f} (step "
             f"{state.best['step']}) -> final {state.last_eval['loss']:.4f}; uniform guess {run.uniform:.4f}")
    log.info(f"best adapter:  {run.output_dir / 'best_model'}")
    log.info(f"final adapter: {run.output_dir / 'final_model'}")
    run.hooks.finished(run.output_dir, summary)
