"""Text-to-music generation shared by inference_lora.py, evaluate.py (and samples during training).

The one entry point is `generate_audio(model, processor, prompts, how)` -> list of float32 numpy
arrays, one per prompt, each exactly `how.duration` seconds long at the model's sample rate:
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
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from tqdm.auto import tqdm

from musicgen_lora.audio.codes import build_delay_pattern_labels, codebook_delays, interleave_channels, split_channels
from musicgen_lora.audio.writer import write_audio
from musicgen_lora.core.common import UserError, log, total_ram_bytes
from musicgen_lora.core.outputs import atomic_file, atomic_write_json
from musicgen_lora.core.precision import dtype_of
from musicgen_lora.data.metadata import tokenize_text
from musicgen_lora.generation.prompts import Job
from musicgen_lora.generation.sampling import (
    DEFAULT_OVERLAP_SHARE,
    DEFAULT_WINDOW_S,
    GREEDY,
    GenerationSettings,
    SamplingSettings,
    WindowPlan,
)
from musicgen_lora.model.checkpoint import is_melody, model_info, unwrap_base
from musicgen_lora.model.loss import forward_logits


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
    return _steps_for_frames(frames_for_duration(duration, info["frame_rate"]), info)


def _steps_for_frames(frames: int, info: dict) -> int:
    return frames + codebook_delays(info["num_codebooks"], info["audio_channels"])[-1]


def longest_window(model) -> float:
    """Seconds one generate() call can hold: the decoder's positions less the start token and the
    delay pattern's extra steps."""
    info = model_info(model)
    limit = unwrap_base(model).decoder.config.max_position_embeddings
    return (limit - 1 - codebook_delays(info["num_codebooks"], info["audio_channels"])[-1]) / info["frame_rate"]


# --------------------------------------------------------------------------------------------
# Longer than one window: windowed continuation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """One generate() call, in frames of the whole clip: the codes [context, start) prompt it (an
    audio prompt's or the previous windows' codes), and it adds [start, stop)."""
    context: int
    start: int
    stop: int


def plan_windows(total: int, window: int, overlap: int, prompt: int = 0) -> list[Window]:
    """The generate() calls that make `total` frames with at most `window` frames each (prompt
    included): the first is prompted by the first `prompt` frames (an audio prompt; 0: text only),
    every later one by the last `overlap` frames before it. One window when it all fits."""
    if not 0 <= prompt < total:
        raise ValueError(f"an audio prompt of {prompt} frames leaves nothing to generate in {total}")
    if prompt >= window or (total > window and not 0 < overlap < window):
        raise ValueError(f"window {window} frames must exceed the prompt ({prompt}) and the overlap ({overlap})")
    out = [Window(0, prompt, min(total, window))]
    while out[-1].stop < total:
        start = out[-1].stop
        out.append(Window(start - overlap, start, min(total, start - overlap + window)))
    return out


def window_frames(model, duration: float, plan: WindowPlan | None) -> tuple[int, int]:
    """(window, overlap) in frames for `plan` on this model; a window longer than the model holds is
    one line naming the flag."""
    plan = plan or WindowPlan()
    info = model_info(model)
    longest = longest_window(model)
    if plan.window is not None and plan.window > longest + 1e-9:
        raise UserError(f"--window_seconds {plan.window:g}: this model generates at most {longest:.1f} s per "
                        f"window ({unwrap_base(model).decoder.config.max_position_embeddings} positions); ask for less")
    seconds = plan.window if plan.window is not None else min(DEFAULT_WINDOW_S, longest)
    window = min(int(seconds * info["frame_rate"] + 1e-6), int(longest * info["frame_rate"] + 1e-6))
    if window < 2:
        raise UserError(f"--window_seconds {seconds:g}: shorter than two frames ({2 / info['frame_rate']:g} s); "
                        f"use at least a few seconds, e.g. --window_seconds {DEFAULT_WINDOW_S:g}")
    overlap = (int(round(plan.overlap * info["frame_rate"])) if plan.overlap is not None
               else int(round(DEFAULT_OVERLAP_SHARE * window)))
    if frames_for_duration(duration, info["frame_rate"]) > window and not 0 < overlap < window:
        raise UserError(f"--window_overlap {overlap / info['frame_rate']:g}: must be above 0 and below the window "
                        f"({window / info['frame_rate']:g} s) for a {duration:g} s clip; e.g. "
                        f"--window_overlap {window / info['frame_rate'] * 0.4:.3g}")
    return window, overlap


def clip_windows(model, duration: float, plan: WindowPlan | None = None,
                 prompt_seconds: float = 0.0) -> list[list[float]]:
    """The new audio of each window, [[start_s, end_s], ...] over the clip (the last ends at
    `duration`): what sidecars record and the report marks. One entry when the clip is one window."""
    info = model_info(model)
    total = frames_for_duration(duration, info["frame_rate"])
    window, overlap = window_frames(model, duration, plan)
    prompt = int(round(prompt_seconds * info["frame_rate"]))
    spans = plan_windows(total, window, overlap, prompt)
    return [[0.0 if i == 0 else w.start / info["frame_rate"], min(duration, w.stop / info["frame_rate"])]
            for i, w in enumerate(spans)]


def check_duration(model, duration: float, plan: WindowPlan | None = None, prompt_seconds: float = 0.0):
    """The flags' one-line errors before any work: a positive duration, a window the model holds, an
    overlap inside it, and an audio prompt shorter than both the window and the clip."""
    if duration <= 0:
        raise UserError("--duration must be positive (seconds)")
    info = model_info(model)
    # The finished clip is held in memory (float32 samples, plus the copy written out); one that cannot
    # fit is refused now, not after hours of generating (--duration 1e9 used to run until killed).
    need = 2 * duration * info["sample_rate"] * info["audio_channels"] * 4
    ram = total_ram_bytes()
    if ram and need > ram / 2:
        most = ram / 2 / (2 * info["sample_rate"] * info["audio_channels"] * 4)
        raise UserError(f"--duration {duration:g}: the clip alone would take {need / 2**30:,.1f} GiB of this machine's "
                        f"{ram / 2**30:.1f} GiB of memory; generate at most {most:,.0f} s (about {most / 3600:.0f} h) "
                        f"in one clip")
    window, _ = window_frames(model, duration, plan)
    fr = info["frame_rate"]
    if prompt_seconds and (prompt_seconds >= duration or prompt_seconds * fr >= window):
        raise UserError(f"--prompt_seconds {prompt_seconds:g}: the audio prompt must be shorter than --duration "
                        f"({duration:g} s) and than one window ({window / fr:g} s)")


def generation_config_for(base, settings: SamplingSettings, duration: float | None = None, frames: int | None = None):
    """Exactly what generate() is told, for `duration` seconds (or `frames` new frames). Every sampling
    value is set, never left None: generate() refills a None from the checkpoint's generation_config
    (guidance 3.0, top_k 250 for MusicGen), so None would silently mean "the checkpoint's value", not "off"."""
    info = model_info(base)
    cfg = copy.deepcopy(base.generation_config)
    cfg.do_sample = False  # SeededSampler does the sampling; generate only takes its argmax
    # transformers runs classifier-free guidance only above 1 (2*B*K decoder rows); 1.0 means off.
    cfg.guidance_scale = float(settings.guidance_scale) if settings.guidance_scale > 1 else 1.0
    cfg.temperature, cfg.top_k, cfg.top_p = 1.0, 50, 1.0  # transformers' neutral values; unused without do_sample
    if frames is None:
        frames = frames_for_duration(duration, info["frame_rate"])
    cfg.max_new_tokens = _steps_for_frames(frames, info)
    cfg.max_length = 1 + cfg.max_new_tokens  # generate() adds a prompt's length to max_new_tokens itself
    cfg.min_new_tokens, cfg.min_length = 0, 0
    return cfg


def melody_batch(base, chromas) -> torch.Tensor:
    """(B, chroma_length, 12): each prompt's chroma, or the null one, fitted to the model's length --
    the same batching as training's (chroma.chroma_batch)."""
    from musicgen_lora.audio.chroma import chroma_batch

    return chroma_batch(chromas, base.config.chroma_length)


def melody_from(chroma, seconds: float, sample_rate: int):
    """A melody's chroma as a window starting `seconds` into the clip hears it: from the frame at that
    time, wrapping round to the melody's start when it is shorter (audiocraft's extension does the
    same with the melody's samples). None (no melody) stays None."""
    from musicgen_lora.audio.chroma import window_frames

    if chroma is None or not len(chroma) or seconds <= 0:
        return chroma
    first = window_frames(int(round(seconds * sample_rate)), 0)[0] % len(chroma)  # the frame nearest that time
    return torch.cat([torch.as_tensor(chroma)[first:], torch.as_tensor(chroma)[:first]])


@contextlib.contextmanager
def _capture_codes(base, decode: bool = True):
    """Record the codes generate() hands to EnCodec's decoder ((B, K_c, frames) per call: one call
    per batch from a mono model, left then right from a stereo one). decode=False skips the decoding
    (a window's audio is decoded once, with the whole clip's codes)."""
    codec, calls = base.audio_encoder, []
    real = codec.decode

    def capture(audio_codes, *args, **kwargs):
        calls.append(audio_codes[0].detach().cpu())
        if decode:
            with torch.autocast(audio_codes.device.type, enabled=False):  # EnCodec in its own dtype
                return real(audio_codes, *args, **kwargs)
        return SimpleNamespace(audio_values=torch.zeros(audio_codes.shape[1], 1, 1))

    codec.decode = capture
    try:
        yield calls
    finally:
        del codec.decode  # back to the class's method


# --------------------------------------------------------------------------------------------
# The decoder generation runs: the adapter merged in, in the generation precision
# --------------------------------------------------------------------------------------------
def _lora_layers(module):
    """Every adapter layer (LoRA, DoRA, LoHa, LoKr: PEFT's BaseTunerLayer) with its parent and name."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(parent, name, child) for parent in module.modules()
            for name, child in parent.named_children() if isinstance(child, BaseTunerLayer)]


def _decoder_bytes(decoder, dtype) -> tuple[int, int]:
    """(bytes of the decoder now, bytes of a plain copy of it in `dtype`)."""
    params = list(decoder.parameters())
    size = torch.tensor([], dtype=dtype).element_size()
    return sum(p.numel() * p.element_size() for p in params), sum(p.numel() * size for p in params)


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: assume it fits


def generation_decoder(base, dtype) -> torch.nn.Module | None:
    """A plain copy of base.decoder for generation: each active LoRA adapter merged into its layer's
    weight (W + BA, computed once instead of two extra matmuls per layer per step: the tiny model
    generated 1.26x faster merged, musicgen-small's ~1.0x; benchmarks/generation.py --paths), in
    `dtype`. None when the decoder is already that (no adapter layers, its own dtype) or a copy does
    not fit in free memory (the caller then generates with the model as it is).

    The copy is built from the weights as they are (the adapter of this turn, or none inside
    disable_adapter()), and the model itself is never touched: training, the held-out loss and the
    next adapter see exactly the weights they saw before."""
    decoder = base.decoder
    own_dtype = next(decoder.parameters()).dtype
    layers = _lora_layers(decoder)
    if not layers and own_dtype == dtype:
        return None
    now, copy_bytes = _decoder_bytes(decoder, dtype)
    device = next(decoder.parameters()).device
    need = now + copy_bytes  # the deep copy in the old dtype, then the cast
    if _free_bytes(device) < need * 1.1:
        log.info(f"generating with the adapter unmerged: a merged copy of the decoder needs {need / 2**30:.1f} GiB, "
                 f"more than is free on {device}")
        return None
    copy_ = copy.deepcopy(decoder)
    for parent, name, layer in _lora_layers(copy_):
        if not layer.disable_adapters and layer.active_adapters:
            layer.merge(adapter_names=list(layer.active_adapters))
        setattr(parent, name, layer.get_base_layer())
    return copy_.to(dtype).eval()


@contextlib.contextmanager
def generation_model(model, precision: str | None = None, merge: bool = True):
    """The MusicGen model generate() should run: its decoder swapped for generation_decoder's copy
    while inside, and autocast to `precision` (fp16/bf16) so the fp32 text encoder's output meets a
    half-precision decoder (EnCodec's decoding is kept out of it: _capture_codes, decode_codes).
    precision None: the decoder's own dtype (the adapter is still merged). merge=False keeps the
    model as it is (PEFT's wrapper, its dtype; benchmarks/generation.py measures the difference)."""
    base = unwrap_base(model)
    own = next(base.decoder.parameters()).dtype
    dtype = own if precision is None or not merge else dtype_of(precision)
    decoder = generation_decoder(base, dtype) if merge else None
    device = next(base.decoder.parameters()).device
    original = base.decoder
    if decoder is not None:
        base._modules["decoder"] = decoder  # not setattr: the PEFT wrapper's hooks stay on `original`
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            yield base
    finally:
        base._modules["decoder"] = original


def decode_codes(base, codes: torch.Tensor) -> torch.Tensor:
    """(B, K, T) codes, stereo rows interleaved -> (B, channels, samples) audio, each channel through
    the codec as generate() decodes it."""
    codec = base.audio_encoder
    device = next(codec.parameters()).device
    per_channel = split_channels(codes, model_info(base)["audio_channels"])
    with torch.autocast(device.type, enabled=False):  # EnCodec in its own dtype, whatever generation ran in
        return torch.cat([codec.decode(c[None].to(device), audio_scales=[None] * c.shape[0]).audio_values
                          for c in per_channel], dim=1)


@torch.no_grad()
def generate_audio(model, processor, prompts: Sequence[str], how: GenerationSettings, *,
                   seed: int | Sequence[int] = 0, chroma: Sequence | None = None, audio_prompts: Sequence | None = None,
                   progress: bool = True, desc: str = "generating", return_codes: bool = False):
    """Generate `how.duration` seconds of audio for each prompt (GenerationSettings: the sampling,
    the windows, the batch size, the precision); returns float32 arrays, (samples,) mono or
    (samples, channels) stereo (and, with return_codes, the (K, frames) EnCodec codes each clip was
    decoded from, stereo rows interleaved [L0, R0, L1, ...] as the decoder predicts them).

    seed: one int for every prompt, or one seed per prompt. Works on a plain MusicGen model or a
    PeftModel (the active adapter applies; inside `disable_adapter()` the base model does).
    Descriptions are cut to data.metadata.MAX_TEXT_TOKENS tokens, as in training. chroma
    (MusicGen-Melody only): one (frames, 12) melody chroma (audio.chroma.chroma_features) or None per
    prompt; None, or no list, is the null melody the model uses without one.

    Longer than one window (how.plan, WindowPlan: 30 s by default), the clip is continued window by
    window, each prompted with the previous codes' last `overlap` seconds (plan_windows), and decoded
    once at the end. audio_prompts: (K, frames) codes per prompt (model.codec.encode_channels of the
    audio that starts the clip; all of one length), which the model continues; the clip starts with
    them. Each prompt's generator runs on across windows, so a seed gives one clip whatever the plan
    is asked in pieces.

    how.precision: fp32, fp16 or bf16 for the decoder (precision.resolve's answer; None: the model's
    own dtype). Either way the active adapter is merged into a copy of the decoder for the call
    (generation_model), so the model passed in is left exactly as it was; how.merge=False generates
    with the model as it is, in its own dtype.
    """
    duration, plan, batch_size, precision, merge = how.duration, how.plan, how.batch_size, how.precision, how.merge
    settings = how.sampling.validate()
    greedy = settings.greedy
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
    info = model_info(model)
    prompt_frames = _prompt_frames(audio_prompts, len(prompts))
    check_duration(model, duration, plan, prompt_frames / info["frame_rate"])
    base = unwrap_base(model)
    device = next(base.parameters()).device
    num_samples = int(round(duration * info["sample_rate"]))
    total = frames_for_duration(duration, info["frame_rate"])
    window, overlap = window_frames(model, duration, plan)
    windows = plan_windows(total, window, overlap, prompt_frames)

    was_training = base.training
    base.eval()
    outputs: list[np.ndarray] = []
    codes: list[torch.Tensor] = []
    batches = range(0, len(prompts), batch_size)
    try:
        with generation_model(model, precision, merge) as base:  # the same object, its decoder swapped inside
            for start in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
                rows = slice(start, start + batch_size)
                inputs = tokenize_text(processor.tokenizer, prompts[rows]).to(device)
                # One sampler per batch: each prompt's generator runs on across its windows.
                samplers = [] if greedy else [SeededSampler(seeds[rows], info["num_codebooks"], settings, device)]
                melodies = chroma[rows] if chroma is not None else None
                if len(windows) == 1 and not prompt_frames:  # one generate() call decodes its own audio
                    if melodies is not None:
                        inputs["input_features"] = melody_batch(base, melodies).to(device)
                    with _capture_codes(base) as decoded:
                        config, processors = generation_config_for(base, settings, duration), _processors(samplers)
                        audio = base.generate(**inputs, generation_config=config, logits_processor=processors)
                    codes += list(interleave_channels(decoded))
                else:
                    first = torch.stack([torch.as_tensor(c) for c in audio_prompts[rows]]) if prompt_frames else None
                    clip_codes = _generate_windows(base, inputs, windows, settings, samplers, melodies, first, info)
                    codes += list(clip_codes)
                    audio = decode_codes(base, clip_codes)
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


def _prompt_frames(audio_prompts, n: int) -> int:
    """Frames of the audio prompts (0 without); they must cover every prompt and be of one length."""
    if audio_prompts is None:
        return 0
    if len(audio_prompts) != n or any(c is None for c in audio_prompts):
        raise ValueError("one audio prompt per text prompt (run prompts without one in their own call)")
    lengths = {int(torch.as_tensor(c).shape[-1]) for c in audio_prompts}
    if len(lengths) != 1:
        raise ValueError(f"audio prompts of different lengths {sorted(lengths)} cannot share a call")
    return lengths.pop()


def _processors(samplers):
    """A fresh LogitsProcessorList per generate() call: generate() appends its guidance processor to
    the list it is given, so a reused list would apply guidance twice in the next window."""
    from transformers import LogitsProcessorList

    return LogitsProcessorList(samplers)


def _generate_windows(base, inputs, windows: list[Window], settings: SamplingSettings, samplers, melodies,
                      prompt_codes, info) -> torch.Tensor:
    """(B, K, frames) codes of a batch made window by window (plan_windows): each generate() call is
    given its context codes as decoder_input_ids -- transformers lays them into the delay pattern
    and samples only what follows -- and the melody from the window's start time."""
    device = inputs["input_ids"].device
    clip = prompt_codes  # (B, K, frames so far), or None before the first window of a text-only clip
    for w in windows:
        kwargs = dict(inputs)
        if w.start > w.context:  # rows item-major, (B * K, frames), as generate() lays out decoder_input_ids
            context = clip[:, :, w.context:w.start]
            kwargs["decoder_input_ids"] = context.reshape(-1, context.shape[-1]).to(device)
        if melodies is not None:
            shifted = [melody_from(m, w.context / info["frame_rate"], info["sample_rate"]) for m in melodies]
            kwargs["input_features"] = melody_batch(base, shifted).to(device)
        cfg = generation_config_for(base, settings, frames=w.stop - w.start)
        with _capture_codes(base, decode=False) as decoded:
            base.generate(**kwargs, generation_config=cfg, logits_processor=_processors(samplers))
        new = interleave_channels(decoded)[:, :, w.start - w.context:]  # generate() returns the context too
        clip = new if clip is None else torch.cat([clip, new], dim=-1)
    return clip


# --------------------------------------------------------------------------------------------
# The label layout against generate()
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def label_agreement(model, processor, prompts: Sequence[str], frames: int = 30,
                    audio_channels: int | None = None, chroma: Sequence | None = None,
                    precision: str | None = None) -> float:
    """Share of label positions where the teacher-forced logits' argmax is the token greedy
    generation chose: generate_audio (guidance off) -> its codes -> codes.build_delay_pattern_labels
    (with `audio_channels`, the model's by default; another value builds a wrong layout, the
    control) -> one forward. 1.0 means training labels line up with how the model is sampled.
    precision: both passes run in it, through generation's merged decoder copy (generation_model)."""
    info = model_info(model)
    channels = info["audio_channels"] if audio_channels is None else audio_channels
    with generation_model(model, precision) as base:
        how = GenerationSettings(frames / info["frame_rate"], GREEDY, precision=precision)
        _, codes = generate_audio(model, processor, list(prompts), how, progress=False, return_codes=True,
                                  chroma=chroma)
        labels = build_delay_pattern_labels(torch.stack(codes), audio_channels=channels)
        device = next(base.parameters()).device
        inputs = {k: v.to(device) for k, v in tokenize_text(processor.tokenizer, list(prompts)).items()}
        if chroma is not None:
            inputs["input_features"] = melody_batch(base, chroma).to(device)
        logits = forward_logits(model, inputs, labels.to(device))
    b, s, k = labels.shape
    pred = logits.float().reshape(b, k, s, -1).argmax(-1).permute(0, 2, 1).cpu()
    valid = labels != -100
    return float((pred[valid] == labels[valid]).float().mean())


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def write_wav(path: Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16"):
    """Write atomically (temp name, then rename) so a kill never leaves a truncated WAV."""
    with atomic_file(path) as tmp:
        write_audio(tmp, np.clip(audio, -1.0, 1.0) if subtype != "FLOAT" else audio, sample_rate, subtype=subtype,
                    format="WAV")


def write_clip(path: Path, audio: np.ndarray, sample_rate: int, sidecar: dict, subtype: str = "PCM_16"):
    """WAV plus a JSON sidecar of the same stem holding everything needed to regenerate it."""
    write_wav(path, audio, sample_rate, subtype)
    atomic_write_json(Path(path).with_suffix(".json"), sidecar)


CODES_SUFFIX = ".codes.safetensors"


def write_codes(path: Path, codes: torch.Tensor, audio_channels: int, frame_rate: float):
    """A clip's (K, frames) EnCodec codes as safetensors (tensor "codes", int16), written atomically:
    what the WAV was decoded from, for comparing generations exactly or decoding them again."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({"codes": codes.detach().to("cpu", torch.int16).contiguous()}, str(tmp),
                  metadata={"audio_channels": str(audio_channels), "frame_rate": str(frame_rate)})


def read_codes(path) -> torch.Tensor:
    """write_codes' file -> (K, frames) int64 codes; a damaged file is one line naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("codes").long()
    except Exception as e:
        raise UserError(f"{path}: not a codes file written by --save_codes ({type(e).__name__}: {e})") from None


def read_melodies(jobs: list[Job], sample_rate: int) -> dict[str, np.ndarray]:
    """Each distinct melody file of the jobs, read once: (samples,) float32, the file's mono mix at
    the model's rate (MusicGen-Melody's feature extractor averages stereo too). A missing or corrupt
    file is audio.load_audio's one line."""
    from musicgen_lora.audio.reader import load_audio

    with warnings.catch_warnings():  # librosa's fallback decoders warn before a corrupt file's error line
        warnings.simplefilter("ignore")
        return {path: load_audio(path, sample_rate, channels=1, fix="pass another melody file")
                for path in dict.fromkeys(j.prompt.melody for j in jobs if j.prompt.melody)}


def job_chroma(jobs: list[Job], melodies: dict[str, np.ndarray], sample_rate: int) -> list | None:
    """generate_audio's `chroma` for the jobs: each melody's (frames, 12) chroma (computed once per
    file), None -- the null melody -- for a job without one; None for jobs that have no melody at all."""
    from musicgen_lora.audio.chroma import chroma_features

    if not any(j.prompt.melody for j in jobs):
        return None
    chromas = {path: chroma_features(wav, sample_rate)[0] for path, wav in melodies.items()}
    return [chromas[j.prompt.melody] if j.prompt.melody else None for j in jobs]


def audio_prompt_codes(model, path, seconds: float) -> torch.Tensor:
    """(K, frames) codes of the first `seconds` of an audio file -- at the model's rate and channels,
    through its own codec -- that a continuation starts from. Only those seconds are read."""
    from musicgen_lora.audio.reader import AudioPieces, piece_samples
    from musicgen_lora.model.codec import encode_channels

    info = model_info(model)
    frames = int(round(seconds * info["frame_rate"]))
    pieces = AudioPieces(path, info["sample_rate"], piece_samples(info["sample_rate"], info["hop_length"]),
                         info["audio_channels"])
    wav = pieces.read_range(0, frames * info["hop_length"])
    if wav.shape[-1] < frames * info["hop_length"]:
        raise UserError(f"{path}: {wav.shape[-1] / info['sample_rate']:.1f} s long, shorter than --prompt_seconds "
                        f"{seconds:g}; lower --prompt_seconds, or continue a longer file")
    return encode_channels(model, torch.from_numpy(wav))[:, :frames]


def generate_jobs(model, processor, jobs: list[Job], how: GenerationSettings, *, chroma: list | None = None,
                  prompt_seconds: float = 0.0, progress: bool = True, desc: str = "generating",
                  return_codes: bool = False):
    """generate_audio over jobs; returns (audio list, wall seconds per clip), and with return_codes
    the (K, frames) codes of each clip as a third item. chroma: job_chroma's list, when the caller
    already has it (evaluate.py: one read for every model); without it, the jobs' melody files are
    read here. Jobs whose prompt has an `audio_prompt` continue the first `prompt_seconds` of that
    file; they run in calls of their own (a call's prompts share one length)."""
    if chroma is None and any(j.prompt.melody for j in jobs):
        sr = model_info(model)["sample_rate"]
        chroma = job_chroma(jobs, read_melodies(jobs, sr), sr)
    t0 = time.time()
    audio: list = [None] * len(jobs)
    codes_of: list = [None] * len(jobs)
    for continued in (False, True):
        idx = [i for i, j in enumerate(jobs) if bool(j.prompt.audio_prompt) == continued]
        if not idx:
            continue
        prompts = None
        if continued:
            codes = {path: audio_prompt_codes(model, path, prompt_seconds)
                     for path in dict.fromkeys(jobs[i].prompt.audio_prompt for i in idx)}
            prompts = [codes[jobs[i].prompt.audio_prompt] for i in idx]
        out, codes = generate_audio(model, processor, [jobs[i].prompt.text for i in idx], how,
                                    seed=[jobs[i].seed for i in idx], progress=progress, desc=desc,
                                    chroma=[chroma[i] for i in idx] if chroma is not None else None,
                                    audio_prompts=prompts, return_codes=True)
        for i, wav, c in zip(idx, out, codes):
            audio[i], codes_of[i] = wav, c
    per_clip = (time.time() - t0) / max(1, len(jobs))
    return (audio, per_clip, codes_of) if return_codes else (audio, per_clip)


def resolve_generation(asked: str, device) -> tuple[torch.dtype | None, str]:
    """(dtype to load the model in, precision its decoder generates in) for --precision `asked`
    (precision.requested). On a GPU a half precision loads the whole model in it (the memory of a
    medium or large model, as before); on a CPU the model stays fp32 -- the held-out loss and FAD
    are computed in fp32 -- and only generation's merged decoder copy is bf16 (generation_model)."""
    from musicgen_lora.core.precision import resolve

    ran, warning = resolve(asked, device)
    if warning:
        log.warning(warning)
    if torch.device(device).type == "cuda" and ran != "fp32":
        return dtype_of(ran), ran
    return None, ran
