"""SamplingSettings, WindowPlan and GenerationSettings: every knob that changes a generated clip, with
its default -- what generate_audio takes, what the sampling flags of inference_lora.py and
evaluate.py (generation/config.py) turn into, and what each clip's sidecar records. No torch here:
the parsers import it for `--help`.
"""
from dataclasses import asdict, dataclass, field

from musicgen_lora.core.common import UserError

WAV_SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")


@dataclass
class SamplingSettings:
    guidance_scale: float = 3.0  # classifier-free guidance; 1 or less turns it off
    temperature: float = 1.0
    top_k: int = 250             # 0 disables
    top_p: float = 0.0           # 0 (or 1) disables
    greedy: bool = False         # argmax instead of sampling

    def validate(self):
        if self.temperature <= 0 and not self.greedy:
            raise UserError("--temperature must be > 0 (use --greedy for argmax decoding)")
        if self.top_k < 0:
            raise UserError("--top_k must be >= 0 (0 disables it)")
        if not 0 <= self.top_p <= 1:
            raise UserError("--top_p must be in [0, 1] (0 or 1 disables it)")
        if self.guidance_scale < 0:
            raise UserError("--guidance_scale must be >= 0 (1 or less disables guidance)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


# Argmax decoding with guidance off: what the label-layout checks compare teacher forcing with.
GREEDY = SamplingSettings(guidance_scale=1.0, greedy=True)


# MusicGen was trained on 30 s excerpts (audiocraft's max_duration); transformers' position table
# allows ~41 s on the hub checkpoints, but what lies past 30 s is outside anything the model has seen
# ("anything past 30 s degrades"). So a clip is generated in windows of at most 30 s.
DEFAULT_WINDOW_S = 30.0
# Each window after the first is prompted with the last 40% of a window of the codes so far (12 s of
# 30) and adds the rest (18 s): audiocraft's extend_stride of 18 s over its 30 s window. A longer
# overlap keeps more context (smoother joins, slower: every window re-reads it); a shorter one adds
# more per window.
DEFAULT_OVERLAP_SHARE = 0.4


@dataclass(frozen=True)
class WindowPlan:
    """How generate_audio cuts a clip longer than one window. window: seconds per generate() call
    (None: DEFAULT_WINDOW_S, or less when the model's positions hold less); overlap: seconds of the
    previous codes that prompt each following window (None: DEFAULT_OVERLAP_SHARE of the window)."""
    window: float | None = None
    overlap: float | None = None

    def to_dict(self) -> dict:
        return {"window_seconds": self.window, "window_overlap": self.overlap}


@dataclass(frozen=True)
class GenerationSettings:
    """How generate_audio makes clips: their length, the sampling, the windows of a long clip, how
    many prompts share a batch, the decoder's precision (fp32, fp16 or bf16; None: the model's own
    dtype) and whether the active adapter is merged into a copy of the decoder for the call
    (generate.generation_model; merge=False generates with the model as it is)."""
    duration: float = 15.0
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    plan: WindowPlan = field(default_factory=WindowPlan)
    batch_size: int = 8
    precision: str | None = None
    merge: bool = True

    def to_dict(self) -> dict:
        """What a sidecar and summary.json record of it."""
        return {"duration": self.duration, **self.sampling.to_dict(), **self.plan.to_dict(),
                "batch_size": self.batch_size, "precision": self.precision}
