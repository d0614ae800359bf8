"""TrainConfig: every setting of a training run, typed, with its default. train_lora.py's flags have
the same names and take their defaults from here; run_config.json records it (plus what the run
derived). No torch here: the parser imports it for `--help`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from musicgen_lora.core.common import UserError
from musicgen_lora.model.targets import DEFAULT_TARGETS

# audiocraft's conditioner configs: text2music.yaml drops the whole description with 0.3 (classifier-free
# guidance's null condition) and each word of the rest with 0.3; chroma2music.yaml (MusicGen-Melody)
# uses 0.2 and 0.2, and drops the melody (to the null chroma) with 0.5.
CONDITIONING_DROPOUT = {"musicgen": {"text_dropout": 0.3, "word_dropout": 0.3},
                        "musicgen_melody": {"text_dropout": 0.2, "word_dropout": 0.2, "chroma_dropout": 0.5}}


@dataclass
class TrainConfig:
    # data and model
    model_path: str = "facebook/musicgen-small"
    data_dir: str = "../data"
    metadata_file: str = "metadata.json"
    output_dir: str = "../output"
    target_duration: float = 15.0
    max_duration: float | None = None
    num_workers: int = 0
    cache_dir: str | None = None
    no_cache: bool = False
    max_valid_clips: int | None = None
    # LoRA
    lora_rank: int = 12
    lora_alpha: float = 24
    lora_dropout: float = 0.05
    lora_target_modules: str = ",".join(DEFAULT_TARGETS)
    # optimisation
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    batch_size: int = 2
    gradient_accumulation_steps: int = 4
    num_epochs: int = 1
    max_steps: int | None = None
    warmup_steps: int | None = None
    max_grad_norm: float = 1.0
    # Conditioning dropout; None: audiocraft's setting for the model's kind (CONDITIONING_DROPOUT),
    # filled in by resolve_conditioning once the model is loaded.
    text_dropout: float | None = None
    word_dropout: float | None = None
    chroma_dropout: float | None = None
    # The decoder's own dropout while training: audiocraft's 0, not the 0.1 the hub's configs carry
    # (modeling.load_model_and_processor says why).
    decoder_dropout: float = 0.0
    seed: int = 42
    # runtime
    device: str = "auto"
    fp16: bool = False
    bf16: bool = False
    precision: str | None = None  # auto, fp32, fp16, bf16 (--fp16/--bf16 are its short forms); None: fp32
    gradient_checkpointing: bool = False
    ignore_memory_plan: bool = False
    # logging and saving
    logging_steps: int = 10
    eval_steps: int | None = None
    sample_every: int = 0
    sample_prompts: str | None = None
    sample_duration: float = 10.0
    save_steps: int = 200
    save_total_limit: int | None = None
    resume_from_checkpoint: str | None = None
    overwrite_output_dir: bool = False
    report_to: str = "none"
    no_progress: bool = False
    # stopping
    early_stopping_patience: int | None = None
    max_nonfinite_steps: int = 10
    # where the settings came from (run_config.json keeps it)
    config: str | None = None
    config_keys: list = field(default_factory=list)

    def check(self):
        """Rules across settings (one setting's range is checked by its flag's type in the parser)."""
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
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise UserError(f"--report_to {self.report_to}: choose one of none, tensorboard, wandb")
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
        """Settings that fix the meaning of "step" and "position in the data order" (a resume must
        keep them; the number of processes is added by the trainer)."""
        return {"batch_size": self.batch_size, "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "seed": self.seed}

    def to_dict(self) -> dict:
        return asdict(self)
