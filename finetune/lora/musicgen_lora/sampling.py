"""SamplingSettings: every knob that changes a generated clip, with its default -- the one place the
sampling flags of inference_lora.py and evaluate.py take their defaults from, and what each clip's
sidecar records. No torch here: the parsers import it for `--help`.
"""
from dataclasses import asdict, dataclass

from musicgen_lora.common import UserError

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
