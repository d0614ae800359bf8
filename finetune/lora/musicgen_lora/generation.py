"""Text-to-music generation shared by inference_lora.py, evaluate.py (and samples during training).

The one entry point is `generate_audio(model, processor, prompts, duration, ...)` -> list of float32
numpy arrays, one per prompt, each exactly `duration` seconds long at the model's sample rate:
(samples,) from a mono model, (samples, 2) from a stereo one (soundfile's layout: a WAV writes as is).

Reproducibility: each prompt is sampled from its own torch.Generator seeded with that prompt's seed,
so a clip depends on (prompt, seed, settings, weights) and not on which other prompts share its batch
or where it sits in it. Two models given one seed draw the same random numbers, so the difference
between their clips comes from the weights (a LoRA adapter with B = 0 gives the base model's audio).
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from musicgen_lora.codes import build_delay_pattern_labels, codebook_delays, interleave_channels
from musicgen_lora.common import UserError, log
from musicgen_lora.data.metadata import tokenize_text
from musicgen_lora.modeling import forward_logits, is_melody, model_info, unwrap_base
from musicgen_lora.outputs import atomic_file, atomic_write_json
from musicgen_lora.prompts import Job
from musicgen_lora.sampling import SamplingSettings


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
class SeededSampler:
    """A logits processor that samples each batch row from its own generator.

    It runs inside `generate` in greedy mode and returns scores that are 0 at the token it drew and
    -1e4 elsewhere, so the argmax picks that token. With classifier-free guidance it receives the
    (conditional, unconditional) halves, mixes them exactly as transformers' CFG processor does, and
    returns the same one-hot scores in both halves: the CFG processor that follows then leaves them
    unchanged (u + (c - u) * g = u when c = u).
    """

    def __init__(self, seeds: Sequence[int], num_codebooks: int, settings: SamplingSettings, device):
        self.k = num_codebooks
        self.s = settings
        self.generators = []
        for seed in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(seed))
            self.generators.append(g)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        rows = input_ids.shape[0]
        logits = scores.float()
        doubled = scores.shape[0] == 2 * rows
        if doubled:
            cond, uncond = logits.split(rows, dim=0)
            logits = uncond + (cond - uncond) * self.s.guidance_scale
        logits = logits / self.s.temperature
        if self.s.top_k and self.s.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.s.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if 0 < self.s.top_p < 1:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > self.s.top_p  # keep the token that crosses top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        probs = logits.softmax(-1)
        tokens = torch.empty(rows, dtype=torch.long, device=scores.device)
        for b, gen in enumerate(self.generators):  # rows are (item, codebook), item-major
            tokens[b * self.k:(b + 1) * self.k] = torch.multinomial(probs[b * self.k:(b + 1) * self.k], 1,
                                                                   generator=gen)[:, 0]
        out = torch.full((rows, scores.shape[-1]), -1e4, dtype=scores.dtype, device=scores.device)
        out.scatter_(1, tokens[:, None], 0.0)
        return torch.cat([out, out]) if doubled else out


def frames_for_duration(duration: float, frame_rate: float) -> int:
    return max(1, math.ceil(duration * frame_rate - 1e-6))


def max_new_tokens_for(duration: float, info: dict) -> int:
    """The delay pattern costs its largest delay in extra steps (K - 1 mono, K/2 - 1 stereo:
    codes.codebook_delays): N new tokens give N - delay frames."""
    return frames_for_duration(duration, info["frame_rate"]) + codebook_delays(info["num_codebooks"],
                                                                               info["audio_channels"])[-1]


def check_duration(model, duration: float):
    info = model_info(model)
    base = unwrap_base(model)
    limit = base.decoder.config.max_position_embeddings
    if duration <= 0:
        raise UserError("--duration must be positive (seconds)")
    need = max_new_tokens_for(duration, info) + 1
    if need > limit:
        longest = (limit - 1 - codebook_delays(info["num_codebooks"], info["audio_channels"])[-1]) / info["frame_rate"]
        raise UserError(f"--duration {duration:g}: this model generates at most {longest:.1f} s "
                        f"({limit} positions); ask for less")


def generation_config_for(base, settings: SamplingSettings, duration: float):
    """Exactly what generate() is told. Every sampling value is set, never left None: generate()
    refills a None from the checkpoint's generation_config (guidance 3.0, top_k 250 for MusicGen),
    so None would silently mean "the checkpoint's value", not "off"."""
    info = model_info(base)
    cfg = copy.deepcopy(base.generation_config)
    cfg.do_sample = False  # SeededSampler does the sampling; generate only takes its argmax
    # transformers runs classifier-free guidance only above 1 (2*B*K decoder rows); 1.0 means off.
    cfg.guidance_scale = float(settings.guidance_scale) if settings.guidance_scale > 1 else 1.0
    cfg.temperature, cfg.top_k, cfg.top_p = 1.0, 50, 1.0  # transformers' neutral values; unused without do_sample
    cfg.max_new_tokens = max_new_tokens_for(duration, info)
    cfg.max_length = 1 + cfg.max_new_tokens
    cfg.min_new_tokens, cfg.min_length = 0, 0
    return cfg


def melody_batch(base, chromas) -> torch.Tensor:
    """(B, chroma_length, 12): each prompt's chroma, or the null one, fitted to the model's length --
    the same batching as training's (chroma.chroma_batch)."""
    from musicgen_lora.chroma import chroma_batch

    return chroma_batch(chromas, base.config.chroma_length)


@contextlib.contextmanager
def _capture_codes(base):
    """Record the codes generate() hands to EnCodec's decoder ((B, K_c, frames) per call: one call
    per batch from a mono model, left then right from a stereo one)."""
    codec, calls = base.audio_encoder, []
    real = codec.decode

    def decode(audio_codes, *args, **kwargs):
        calls.append(audio_codes[0].detach().cpu())
        return real(audio_codes, *args, **kwargs)

    codec.decode = decode
    try:
        yield calls
    finally:
        del codec.decode  # back to the class's method


@torch.no_grad()
def generate_audio(model, processor, prompts: Sequence[str], duration: float, *, guidance_scale: float = 3.0,
                   temperature: float = 1.0, top_k: int = 250, top_p: float = 0.0, greedy: bool = False,
                   seed: int | Sequence[int] = 0, batch_size: int = 8, progress: bool = True,
                   desc: str = "generating", return_codes: bool = False, chroma: Sequence | None = None):
    """Generate `duration` seconds of audio for each prompt; returns float32 arrays, (samples,) mono
    or (samples, channels) stereo (and, with return_codes, the (K, frames) EnCodec codes each clip
    was decoded from, stereo rows interleaved [L0, R0, L1, ...] as the decoder predicts them).

    seed: one int for every prompt, or one seed per prompt. Works on a plain MusicGen model or a
    PeftModel (the active adapter applies; inside `disable_adapter()` the base model does).
    Descriptions are cut to dataset.MAX_TEXT_TOKENS tokens, as in training. chroma (MusicGen-Melody
    only): one (frames, 12) melody chroma (chroma.chroma_features) or None per prompt; None, or no
    list, is the null melody the model uses without one.
    """
    settings = SamplingSettings(guidance_scale, temperature, top_k, top_p, greedy)
    settings.validate()
    if chroma is not None and not is_melody(model):
        if any(c is not None for c in chroma):  # text-only MusicGen has no input for it: never drop it silently
            raise UserError("a melody needs a MusicGen-Melody model; this one is text-only MusicGen")
        chroma = None
    if batch_size < 1:
        raise UserError("--batch_size must be at least 1")
    prompts = list(prompts)
    seeds = [int(seed)] * len(prompts) if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if len(seeds) != len(prompts):
        raise ValueError("one seed per prompt")
    check_duration(model, duration)
    base = unwrap_base(model)
    info = model_info(model)
    device = next(base.parameters()).device
    num_samples = int(round(duration * info["sample_rate"]))
    gen_config = generation_config_for(base, settings, duration)

    was_training = base.training
    base.eval()
    outputs: list[np.ndarray] = []
    codes: list[torch.Tensor] = []
    batches = range(0, len(prompts), batch_size)
    try:
        for start in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
            texts = prompts[start:start + batch_size]
            inputs = tokenize_text(processor.tokenizer, texts).to(device)
            if chroma is not None:
                inputs["input_features"] = melody_batch(base, chroma[start:start + batch_size]).to(device)
            from transformers import LogitsProcessorList

            procs = LogitsProcessorList()
            if not greedy:
                procs.append(SeededSampler(seeds[start:start + batch_size], info["num_codebooks"], settings, device))
            with _capture_codes(base) as decoded:
                audio = base.generate(**inputs, generation_config=gen_config, logits_processor=procs)
            codes += list(interleave_channels(decoded))
            audio = audio.float().cpu().numpy()  # (B, channels, samples)
            for row in audio:
                row = row[:, :num_samples]
                if row.shape[-1] < num_samples:  # never expected: EnCodec returns frames * hop samples
                    row = np.pad(row, ((0, 0), (0, num_samples - row.shape[-1])))
                outputs.append(np.ascontiguousarray(row[0] if row.shape[0] == 1 else row.T, dtype=np.float32))
    finally:
        if was_training:
            base.train()
    return (outputs, codes) if return_codes else outputs


# --------------------------------------------------------------------------------------------
# The label layout against generate()
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def label_agreement(model, processor, prompts: Sequence[str], frames: int = 30,
                    audio_channels: int | None = None, chroma: Sequence | None = None) -> float:
    """Share of label positions where the teacher-forced logits' argmax is the token greedy
    generation chose: generate_audio (guidance off) -> its codes -> codes.build_delay_pattern_labels
    (with `audio_channels`, the model's by default; another value builds a wrong layout, the
    control) -> one forward. 1.0 means training labels line up with how the model is sampled."""
    info = model_info(model)
    channels = info["audio_channels"] if audio_channels is None else audio_channels
    _, codes = generate_audio(model, processor, list(prompts), frames / info["frame_rate"], greedy=True,
                              guidance_scale=1.0, progress=False, return_codes=True, chroma=chroma)
    labels = build_delay_pattern_labels(torch.stack(codes), audio_channels=channels)
    device = next(unwrap_base(model).parameters()).device
    inputs = {k: v.to(device) for k, v in tokenize_text(processor.tokenizer, list(prompts)).items()}
    if chroma is not None:
        inputs["input_features"] = melody_batch(unwrap_base(model), chroma).to(device)
    logits = forward_logits(model, inputs, labels.to(device))
    b, s, k = labels.shape
    pred = logits.reshape(b, k, s, -1).argmax(-1).permute(0, 2, 1).cpu()
    valid = labels != -100
    return float((pred[valid] == labels[valid]).float().mean())


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def write_wav(path: Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16"):
    """Write atomically (temp name, then rename) so a kill never leaves a truncated WAV."""
    with atomic_file(path) as tmp:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0) if subtype != "FLOAT" else audio, sample_rate,
                 subtype=subtype, format="WAV")


def write_clip(path: Path, audio: np.ndarray, sample_rate: int, sidecar: dict, subtype: str = "PCM_16"):
    """WAV plus a JSON sidecar of the same stem holding everything needed to regenerate it."""
    write_wav(path, audio, sample_rate, subtype)
    atomic_write_json(Path(path).with_suffix(".json"), sidecar)


def read_melodies(jobs: list[Job], sample_rate: int) -> dict[str, np.ndarray]:
    """Each distinct melody file of the jobs, read once: (samples,) float32, the file's mono mix at
    the model's rate (MusicGen-Melody's feature extractor averages stereo too). A missing or corrupt
    file is audio.load_audio's one line."""
    from musicgen_lora.audio import load_audio

    with warnings.catch_warnings():  # librosa's fallback decoders warn before a corrupt file's error line
        warnings.simplefilter("ignore")
        return {path: load_audio(path, sample_rate, channels=1, fix="pass another melody file")
                for path in dict.fromkeys(j.prompt.melody for j in jobs if j.prompt.melody)}


def job_chroma(jobs: list[Job], melodies: dict[str, np.ndarray], sample_rate: int) -> list | None:
    """generate_audio's `chroma` for the jobs: each melody's (frames, 12) chroma (computed once per
    file), None -- the null melody -- for a job without one; None for jobs that have no melody at all."""
    from musicgen_lora.chroma import chroma_features

    if not any(j.prompt.melody for j in jobs):
        return None
    chromas = {path: chroma_features(wav, sample_rate)[0] for path, wav in melodies.items()}
    return [chromas[j.prompt.melody] if j.prompt.melody else None for j in jobs]


def generate_jobs(model, processor, jobs: list[Job], duration: float, settings: SamplingSettings,
                  batch_size: int, progress: bool = True, desc: str = "generating", chroma: list | None = None):
    """generate_audio over jobs; returns (audio list, wall seconds per clip). chroma: job_chroma's
    list, when the caller already has it (evaluate.py: one read for every model); without it, the
    jobs' melody files are read here."""
    if chroma is None and any(j.prompt.melody for j in jobs):
        sr = model_info(model)["sample_rate"]
        chroma = job_chroma(jobs, read_melodies(jobs, sr), sr)
    t0 = time.time()
    audio = generate_audio(model, processor, [j.prompt.text for j in jobs], duration,
                           seed=[j.seed for j in jobs], batch_size=batch_size, progress=progress, desc=desc,
                           chroma=chroma, **settings.to_dict())
    per_clip = (time.time() - t0) / max(1, len(jobs))
    return audio, per_clip


def resolve_dtype(fp16: bool, bf16: bool, device: str):
    if fp16 and bf16:
        raise UserError("--fp16 and --bf16 exclude each other; pick one")
    if not (fp16 or bf16):
        return None
    if device == "cpu":
        log.warning(f"warning: --{'fp16' if fp16 else 'bf16'} needs a GPU; generating in fp32 on the CPU")
        return None
    return torch.float16 if fp16 else torch.bfloat16
