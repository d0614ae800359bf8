"""TrainConfig: every setting of a training run, typed, with its default, help and range: train_lora.py's
parser is derived from its fields (core/config.py), and run_config.json records it (plus what the
run derived). No torch here: the parser imports it for `--help`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from musicgen_lora.core.common import UserError
from musicgen_lora.core.config import (
    check_settings,
    dropout,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    probability,
    seed_int,
    setting,
)
from musicgen_lora.core.precision import PRECISIONS
from musicgen_lora.model.targets import ADAPTER_TYPES, DEFAULT_TARGETS

DATA, LORA, OPTIM = "data and model", "LoRA", "optimisation"
RUNTIME, SAVING, STOPPING = "runtime", "logging and saving", "stopping"

# audiocraft's conditioner configs: text2music.yaml drops the whole description with 0.3 (classifier-free
# guidance's null condition) and each word of the rest with 0.3; chroma2music.yaml (MusicGen-Melody)
# uses 0.2 and 0.2, and drops the melody (to the null chroma) with 0.5.
CONDITIONING_DROPOUT = {"musicgen": {"text_dropout": 0.3, "word_dropout": 0.3},
                        "musicgen_melody": {"text_dropout": 0.2, "word_dropout": 0.2, "chroma_dropout": 0.5}}


@dataclass
class TrainConfig:
    """Every setting of a training run, typed, with its default and its flag (train_lora.py --help is
    derived from these fields; a YAML --config file uses the same names)."""

    model_path: str = setting("facebook/musicgen-small", "Local MusicGen folder or hub id (offline machines need a "
                              "local folder).", group=DATA, aliases=("--base_model_path",))
    data_dir: str = setting("../data", "Folder holding metadata.json and the audio it lists.", group=DATA)
    metadata_file: str = setting("metadata.json", "Metadata file, relative to --data_dir.", group=DATA)
    output_dir: str = setting("../output", "Run directory for adapters, checkpoints and logs.", group=DATA)
    target_duration: float = setting(15.0, "Training window in seconds: longer clips are cropped (randomly in "
                                     "training), shorter ones padded, and every padded frame is masked out of the "
                                     "loss.", type=positive_float, group=DATA)
    max_duration: float | None = setting(None, "Upper bound on the window in seconds (kept for older command "
                                         "lines); the window is min(target_duration, max_duration).",
                                         type=positive_float, group=DATA)
    num_workers: int = setting(0, "DataLoader worker processes for audio decoding.", type=nonneg_int, group=DATA)
    cache_dir: str | None = setting(None, "Code store folder (default: DATA_DIR/code_store): each clip's EnCodec "
                                    "codes, found by the audio's content, encoded once and again only when its "
                                    "audio, the codec or the sample rate changes.", group=DATA)
    strict_store: bool = setting(False, "Stop on a damaged code-store unit instead of skipping it with a warning "
                                 "(its clips are then encoded again, or missing from a --codes_only store).",
                                 group=DATA)
    max_valid_clips: int | None = setting(None, "Validate on at most this many clips, evenly spaced over the "
                                          "validation set, the same ones at every evaluation (default: all; for "
                                          "collections whose validation would take an hour).", type=positive_int,
                                          group=DATA)
    valid_ratio: float = setting(0.1, "Data without a valid split: hold out this share of its source tracks (whole "
                                 "tracks, at least one) for validation, never trained on; 0 validates on training "
                                 "clips.", type=fraction, group=DATA)
    no_cache: bool = setting(False, "No longer does anything (kept so older command lines run): every run trains "
                             "from the code store.", group=DATA)

    adapter_type: str = setting("lora", "lora (W + alpha/r BA); rslora (alpha/sqrt(r): higher ranks are not damped); "
                                "dora (a learned magnitude per output times the direction of W + BA; slower "
                                "steps); loha / lokr (Hadamard / Kronecker products: more expressive per "
                                "parameter, a full weight-sized update built every step). Saved as a plain PEFT "
                                "folder; README.md, \"Which adapter type\".", choices=ADAPTER_TYPES, group=LORA)
    lora_rank: int = setting(12, "LoRA rank r.", type=positive_int, group=LORA)
    lora_alpha: float = setting(24, "LoRA alpha (scale = alpha / r).", type=positive_float, group=LORA)
    lora_dropout: float = setting(0.05, "Dropout on the LoRA branch (loha/lokr: their rank dropout).", type=dropout,
                                  group=LORA)
    lora_target_modules: str = setting(",".join(DEFAULT_TARGETS), "Comma-separated decoder linear layers to adapt "
                                       "(decoder only; text encoder and EnCodec stay frozen).", group=LORA)

    learning_rate: float = setting(1e-4, "Peak AdamW learning rate.", type=nonneg_float, group=OPTIM)
    weight_decay: float = setting(0.01, "AdamW weight decay on LoRA weights.", type=nonneg_float, group=OPTIM)
    batch_size: int = setting(2, "Clips per micro-batch.", type=positive_int, group=OPTIM)
    gradient_accumulation_steps: int = setting(4, "Micro-batches per optimizer step (effective batch = batch_size x "
                                               "this).", type=positive_int, group=OPTIM)
    num_epochs: int = setting(1, "Passes over the training clips.", type=positive_int, group=OPTIM)
    max_steps: int | None = setting(None, "Train this many optimizer steps, however many epochs that takes "
                                    "(overrides --num_epochs, as in transformers' Trainer).", type=positive_int,
                                    group=OPTIM)
    warmup_steps: int | None = setting(None, "Linear warm-up steps before cosine decay (default: 5%% of the "
                                       "optimizer steps).", type=nonneg_int, group=OPTIM)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm (0 disables).", type=nonneg_float, group=OPTIM)
    # Conditioning dropout; None: audiocraft's setting for the model's kind (CONDITIONING_DROPOUT),
    # filled in by resolve_conditioning once the model is loaded.
    text_dropout: float | None = setting(None, "Probability of training a clip with no condition at all: no "
                                         "description and, on MusicGen-Melody, no melody (the null condition "
                                         "classifier-free guidance pairs each prompt with). Default: audiocraft's "
                                         "setting, 0.3 (0.2 for MusicGen-Melody).", type=probability, group=OPTIM)
    word_dropout: float | None = setting(None, "Probability of leaving out each word of a description in training "
                                         "(audiocraft's T5 word dropout), so prompts shorter or worded unlike the "
                                         "captions still steer. Default: 0.3 (0.2 for MusicGen-Melody).",
                                         type=probability, group=OPTIM)
    merge_tempo_key_p: float = setting(0.0, "Probability of appending a clip's tempo and key (metadata \"bpm\" "
                                       "and \"key\", e.g. from prepare_data.py --tempo_key) to its description in "
                                       "training, as \"... key: a minor. bpm: 120.0\" (audiocraft's merge_text_p; "
                                       "each field kept with probability 0.5), so prompts may name them. Default 0: "
                                       "off, as in audiocraft.", type=probability, group=OPTIM)
    chroma_dropout: float | None = setting(None, "MusicGen-Melody: probability of training a clip with the null "
                                           "melody (what generation without --melody uses) instead of its chroma. "
                                           "Default: audiocraft's 0.5.", type=probability, group=OPTIM)
    # The decoder's own dropout while training: audiocraft's 0, not the 0.1 the hub's configs carry
    # (model.checkpoint.load_model_and_processor says why).
    decoder_dropout: float = setting(0.0, "Dropout inside MusicGen's decoder while training (embeddings, residual "
                                     "branches). Default 0, as audiocraft trained MusicGen; the hub's configs say "
                                     "0.1, which kept a melody adapter from learning to follow its chroma.",
                                     type=dropout, group=OPTIM)
    seed: int = setting(42, "Seed for LoRA init, crops, dropout and data order.", type=seed_int, group=OPTIM)

    device: str = setting("auto", "auto, cpu or cuda.", group=RUNTIME)
    precision: str | None = setting(None, "Mixed precision: fp32 (default: losses comparable with earlier runs), "
                                    "bf16 (a GPU that has it, or a CPU with avx512_bf16/amx_bf16: ~2x faster there), "
                                    "fp16 (GPU), or auto (the fastest this hardware has: bf16, else fp16 on a GPU, "
                                    "else fp32).", choices=PRECISIONS, group=RUNTIME)
    fp16: bool = setting(False, "Short for --precision fp16 (GPU only; fp32 with a warning on CPU).", group=RUNTIME)
    bf16: bool = setting(False, "Short for --precision bf16.", group=RUNTIME)
    gradient_checkpointing: bool = setting(False, "Recompute decoder activations in the backward pass: less "
                                           "memory, slower steps (see python -m benchmarks.memory).", group=RUNTIME)
    ignore_memory_plan: bool = setting(False, "Start even when the memory plan printed at the start says the run "
                                       "will not fit the GPU (the plan is an estimate; see "
                                       "musicgen_lora/training/memory.py).", group=RUNTIME)

    logging_steps: int = setting(10, "Log train loss every N optimizer steps.", type=positive_int, group=SAVING)
    eval_steps: int | None = setting(None, "Also validate every N optimizer steps (always at each epoch end).",
                                     type=positive_int, group=SAVING)
    sample_every: int = setting(0, "Every N validations, generate --sample_prompts into OUTPUT_DIR/samples/step-N/ "
                                "so progress can be heard during training (0 = off).", type=nonneg_int, group=SAVING)
    sample_prompts: str | None = setting(None, "Prompts for --sample_every: a prompts file (JSON/txt, as evaluate.py "
                                         "reads) (default: the first 3 validation descriptions).", group=SAVING)
    sample_duration: float = setting(10.0, "Seconds per sample for --sample_every.", type=positive_float,
                                     group=SAVING)
    save_steps: int = setting(200, "Write checkpoints/checkpoint-N (adapter + optimizer, scheduler, RNG and data "
                              "position, enough to resume) every N optimizer steps.", type=nonneg_int, group=SAVING)
    save_total_limit: int | None = setting(None, "Keep only the newest N checkpoints (default: keep all; "
                                           "best_model/ is never removed).", type=positive_int, group=SAVING)
    resume_from_checkpoint: str | None = setting(None, "Continue a run: 'latest' (newest checkpoint in --output_dir) "
                                                 "or a checkpoint-N folder. Use the run's other flags unchanged.",
                                                 group=SAVING)
    overwrite_output_dir: bool = setting(False, "Replace a run already in --output_dir (its outputs are deleted "
                                         "first).", group=SAVING, aliases=("--overwrite",))
    report_to: str = setting("none", "Also send metrics to tensorboard (OUTPUT_DIR/logs/) or wandb (pip install "
                             "wandb); logs/metrics.jsonl is always written.", choices=("none", "tensorboard", "wandb"),
                             group=SAVING)
    no_progress: bool = setting(False, "Hide progress bars (logs still printed).", group=SAVING)

    early_stopping_patience: int | None = setting(None, "Stop after N validations in a row without a new best loss "
                                                  "(final_model is still written). Default: never.",
                                                  type=positive_int, group=STOPPING)
    max_nonfinite_steps: int = setting(10, "A NaN/inf loss or gradient skips that update; this many in a row stop "
                                       "the run (best_model/ and checkpoints are kept). 0: never stop.",
                                       type=nonneg_int, group=STOPPING)
    # where the settings came from (run_config.json keeps it; --config is the parser's own flag)
    config: str | None = None
    config_keys: list = field(default_factory=list)

    def check(self):
        """Each setting's range (as its flag's type checks it) and the rules across settings."""
        check_settings(self)
        self.requested_precision  # noqa: B018 (raises on --fp16 with --bf16, or a --precision that disagrees)
        if self.resume_from_checkpoint and self.overwrite_output_dir:
            raise UserError("--resume_from_checkpoint continues the run in --output_dir and --overwrite_output_dir "
                            "replaces it; pass one of them")
        bad = [t for t in self.targets if not t.replace("_", "").isalnum()]
        if not self.targets or bad:
            raise UserError(f"--lora_target_modules {self.lora_target_modules!r}: give comma-separated layer names "
                            f"such as {','.join(DEFAULT_TARGETS)}")
        if self.sample_prompts and not self.sample_every:
            raise UserError("--sample_prompts is used by --sample_every N; pass both (or neither)")
        return self

    def resolve_conditioning(self, model_type: str) -> list[str]:
        """Fill the dropouts left at None with audiocraft's setting for this kind of model; returns
        the flags given that this kind has no use for (--chroma_dropout on a text-only model)."""
        defaults = CONDITIONING_DROPOUT[model_type]
        unused = [f"--{k}" for k in ("chroma_dropout",) if k not in defaults and getattr(self, k) is not None]
        for key in ("text_dropout", "word_dropout", "chroma_dropout"):
            if getattr(self, key) is None or key not in defaults:
                setattr(self, key, defaults.get(key))
        return unused

    @property
    def targets(self) -> list[str]:
        return [t.strip() for t in self.lora_target_modules.split(",") if t.strip()]

    @property
    def window_seconds(self) -> float:
        """The training window: --target_duration, capped by --max_duration (kept for older command lines)."""
        if self.max_duration is None:
            return self.target_duration
        return min(self.target_duration, self.max_duration)

    @property
    def requested_precision(self) -> str:
        """What was asked; fp32 by default (precision.py says why training does not default to auto)."""
        from musicgen_lora.core.precision import requested

        return requested(self.precision, self.fp16, self.bf16, default="fp32")

    @property
    def resume_critical(self) -> dict:
        """Settings that fix the meaning of "step" and "position in the data order", and of the saved
        weights (a resume must keep them; the number of processes is added by the trainer)."""
        return {"batch_size": self.batch_size, "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "seed": self.seed, "adapter_type": self.adapter_type}

    def to_dict(self) -> dict:
        return asdict(self)
