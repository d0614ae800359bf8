"""Optional text-audio agreement: cosine similarity of CLAP text and audio embeddings.

--clap_model_path points at a local transformers CLAP folder (e.g. a saved laion/clap-htsat-unfused);
nothing is downloaded. The number is comparable between models scored with the same CLAP only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from musicgen_lora.audio.librosa_import import load_librosa
from musicgen_lora.core.common import UserError


class ClapScorer:
    def __init__(self, path: str, device: str = "cpu"):
        from transformers import AutoProcessor, ClapModel

        p = Path(path)
        if not (p / "config.json").is_file():
            raise UserError(f"{path}: no config.json here; --clap_model_path needs a local transformers CLAP folder")
        try:
            self.model = ClapModel.from_pretrained(str(p)).eval().to(device)
            self.processor = AutoProcessor.from_pretrained(str(p))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: cannot load a CLAP model ({str(e).splitlines()[0][:200]})") from None
        self.device = device
        self.sample_rate = self.processor.feature_extractor.sampling_rate

    @torch.no_grad()
    def similarity(self, prompts: list[str], audio: list[np.ndarray], sample_rate: int, batch_size: int = 8):
        """Cosine similarity of each prompt with its clip, in [-1, 1]."""
        librosa = load_librosa()

        out = []
        rng_state = np.random.get_state()
        np.random.seed(0)  # CLAP's rand_trunc crops clips longer than 10 s at random: fix the crop
        try:
            for i in range(0, len(prompts), batch_size):
                clips = [librosa.resample(np.asarray(a, dtype=np.float32), orig_sr=sample_rate,
                                          target_sr=self.sample_rate) for a in audio[i:i + batch_size]]
                inputs = self.processor(text=prompts[i:i + batch_size], audio=clips, sampling_rate=self.sample_rate,
                                        return_tensors="pt", padding=True).to(self.device)
                res = self.model(**inputs)
                t = torch.nn.functional.normalize(res.text_embeds.float(), dim=-1)
                a = torch.nn.functional.normalize(res.audio_embeds.float(), dim=-1)
                out += (t * a).sum(-1).tolist()
        finally:
            np.random.set_state(rng_state)
        return out
