"""The memory plan: peak device memory of a LoRA training step, estimated before training starts, and
the settings that would fit when it does not.

    plan = plan_memory(model_or_config, precision="fp16", batch_size=2, window_seconds=15)
    log.info(plan.describe())   # memory plan (cuda:0, fp16, batch 2 x 15 s, checkpointing off): ...
    check_plan(plan)            # UserError naming flags that fit, when it cannot fit the GPU

What the plan counts, in bytes (B clips, S audio positions, P prefix positions, T text tokens,
n = B*(P+S), L layers of width h, FFN width F, K codebooks of V codes, LoRA rank r; `a` the width of an
activation: 2 under --fp16/--bf16 autocast, else 4). Text-only MusicGen has no prefix (P = 0): its
decoder reads the text through cross-attention. MusicGen-Melody has no cross-attention: its decoder
runs over [projected chroma (config.chroma_length frames, 235), text states, audio], so P = 235 + T
and every layer's self-attention and FFN see all P+S positions (transformers' MusicgenMelodyDecoder
concatenates them before the first layer):

- weights: every parameter and buffer as loaded (fp32: accelerate's mixed precision keeps the
  weights fp32 and casts per op), the T5 text encoder and EnCodec included.
- LoRA/optimizer: trainable LoRA weights, their gradients and AdamW's two moments: 16 bytes per
  trainable parameter (all fp32).
- activations: what autograd keeps from the forward for the backward. Per decoder layer and
  decoder token, derived from MusicgenDecoderLayer's forward with frozen base weights (a frozen
  linear keeps no input: its input gradient needs only the weight):
    * each of the 3 LayerNorms keeps its fp32 input (the residual stream stays fp32 under
      autocast) plus mean and rstd: 3 x (4h + 8);
    * each LoRA'd linear keeps the input of lora_A (its dropout's output, cast to `a`), the
      dropout mask (a bool, 1 byte, on CUDA; a float noise tensor, 4 bytes, on the CPU) and the
      r-wide lora_A output that lora_B's gradient needs. Without LoRA dropout in fp32, linears
      reading one tensor (q, k, v) share one copy;
    * SDPA attention (flash / memory-efficient kernels, no S x S weights) keeps q, k, v, its
      output and a log-sum-exp per head: self-attention 4ah, cross-attention 2ah per decoder
      token plus 2ah per text token for k and v (eager attention adds the S x S softmax); melody
      layers have no cross-attention (its LayerNorm, LoRA inputs and dropout mask go with it);
    * the FFN keeps GELU's input (aF) and fc2's LoRA input (aF + mask) in the F-wide space;
    * the dropout masks after self-attention, cross-attention and the FFN (config.dropout).
  Without gradient checkpointing all L layers are kept; with it, only each layer's input (L x 4h,
  non-reentrant checkpointing keeps the arguments). Both add the final LayerNorm's input.
- half-precision weight copies (--fp16/--bf16 only): autocast casts each frozen fp32 weight per
  call and does not cache it (it caches only leaves that require grad), and the linear's backward
  keeps that copy: 2 bytes per decoder linear and LM head weight, for every layer without
  checkpointing, one layer with it.
- logits/loss: masked_token_nll takes the logits to fp32 and cross_entropy keeps the fp32
  log-softmax; at the start of the backward that output, its gradient and the logits' gradient are
  live at once: 12 bytes x B x K x S x V (stereo: K = 8, twice mono's). The LM heads run over the
  prefix too (MusicGen-Melody's logits cover all P+S positions; model.loss.forward_logits slices the
  audio ones off), so with a prefix two more moments count: the forward's K head outputs and their
  stack, 2a x (P+S), and the slice's backward, which writes the audio positions' gradient into a
  zero gradient of all P+S positions, 12S + aP. Per B x K x V: max(12S + aP, 2a(P+S)), 12S when
  P = 0 (measured on a CPU with the heads alone: exactly max(12S + 4P, 8(P+S)) at P = 0-800).
- the adapter type (--adapter_type): rsLoRA is LoRA's memory. DoRA adds a magnitude per output
  (trainable) and keeps, per adapted linear, the frozen layer's output and the LoRA branch's output
  for the magnitude's gradient: 2a x out-width per token; its weight norm (W + BA, one weight-sized
  fp32 tensor, no grad) is transient. LoHa and LoKr build each adapted linear's whole update
  (out x in, fp32) every forward and keep it, with the linear's input, for the backward: weight-sized
  tensors per adapted linear of every kept layer, however small the batch; no r-wide output.
- layer backward: one layer's backward working set (2aF + 16h: the F-wide gradients and a few fp32
  gradients of the residual stream), with checkpointing plus the layer's activations recomputed for
  it. The layers' backward starts after the loss's and the LM heads' are done and the logits freed,
  so the step counts the larger of this and the logits, not both (on a CPU, musicgen-small's melody
  layout at 2 s with checkpointing: the sum overstated the measured step by 28%, the larger is 3.4%
  over).
- EnCodec encode (--no_cache only): each clip is encoded at every step, one ~30 s piece at a time,
  under no_grad, before the forward: about 5 full-rate tensors of num_filters x samples in fp32
  (block input, ELU output, its padded copy, the branch and the residual sum; measured 4.6 on a
  CPU), times the audio channels. It is not held together with the activations, so the plan counts
  the larger of the two.
- overhead: a fixed allowance for what the framework holds outside these tensors (CUDA context and
  library workspaces on a GPU; the Python, torch and transformers libraries on a CPU).

Assumptions: the sequence is S = frames + K/C - 1 (the delay pattern; C audio channels), frames =
ceil(window x sample rate / hop), after MusicGen-Melody's P = chroma_length + T (its chroma is
always repeated or cut to chroma_length frames, the null melody included); the text is the longest
training description (cut to 512 T5 tokens), TEXT_TOKENS when not known; the text encoder (and
melody's chroma and text projections) runs without a graph (frozen, no input needs a gradient), so
it keeps nothing. Layer 0 is counted like the others (it keeps slightly less: its input
needs no gradient). Nothing here is fitted to measurements: benchmarks/memory.py
prints the plan next to measured peaks and the error of the estimate. On a CPU (fp32, batch 2 x 2 s,
musicgen-small's architecture, text-only and melody, mono and stereo) the totals came out 3.5-6.6%
high, the step without checkpointing within 2% of the measured one (melody: 0.3%), with
checkpointing 6-18% low for text-only (a fixed 10-20 MB per step that no term counts) and 3.4% high
for melody. The half-precision terms (weight copies, 2-byte activations, 1-byte masks) follow the
same derivation but were not measured on a GPU yet.

A CUDA device stops the run (UserError) when the plan exceeds its memory less a margin for the
caching allocator's fragmentation; a CPU run only prints the plan (and a warning past the RAM).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

from musicgen_lora.core.common import UserError, log, total_ram_bytes
from musicgen_lora.model.lora import DEFAULT_TARGETS
from musicgen_lora.model.targets import ADAPTER_NAMES

GIB = 2**30
TEXT_TOKENS = 64  # text length assumed when the descriptions are not at hand
OVERHEAD = {"cuda": int(0.5 * GIB), "cpu": int(0.4 * GIB)}  # framework allowance (see module doc)
CUDA_MARGIN = 0.05  # fraction of a GPU kept free for the caching allocator's fragmentation
CODEC_FULL_RATE_TENSORS = 5  # EnCodec encoder: full-rate fp32 tensors live at once (see module doc)
LOGITS_BYTES = 12  # per logit at the backward's start: fp32 log-softmax, its gradient, the logits' gradient
SELF_ATTN, CROSS_KV = ("q_proj", "k_proj", "v_proj"), ("k_proj", "v_proj")


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a MusicGen checkpoint the plan needs (from a loaded model or a config)."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    codebooks: int
    audio_channels: int
    cross_hidden: int  # width of the text states that cross-attention's k and v read
    sample_rate: int
    hop_length: int
    codec_filters: int
    dropout: float
    activation_dropout: float
    attn_implementation: str
    frozen_parameters: int  # every parameter but LoRA's
    weight_bytes: int  # frozen parameters and buffers, as loaded
    chroma_length: int = 0  # MusicGen-Melody: chroma frames heading the decoder's sequence; 0: text-only MusicGen

    @property
    def melody(self) -> bool:
        """MusicGen-Melody: a [chroma, text] prefix in the decoder's sequence, no cross-attention."""
        return self.chroma_length > 0

    @property
    def linear_weights_per_layer(self) -> int:
        """Weights of one decoder layer's linears: self-attention 4h^2, cross-attention 2h^2 + 2h x
        cross_hidden (none in melody), FFN 2hF."""
        h = self.hidden
        cross = 0 if self.melody else 2 * h * h + 2 * h * self.cross_hidden
        return 4 * h * h + cross + 2 * h * self.ffn

    def adapted_linears(self, targets) -> list[tuple[int, int, bool]]:
        """(in, out, reads the text states) of each adapted linear of one layer: self- and
        cross-attention (self only in melody) + FFN."""
        h, f, c = self.hidden, self.ffn, self.cross_hidden
        cross = {} if self.melody else {"q_proj": [(h, h, False)], "k_proj": [(c, h, True)],
                                        "v_proj": [(c, h, True)], "out_proj": [(h, h, False)]}
        widths = {"q_proj": [(h, h, False)], "k_proj": [(h, h, False)], "v_proj": [(h, h, False)],
                  "out_proj": [(h, h, False)], "fc1": [(h, f, False)], "fc2": [(f, h, False)]}
        widths = {t: w + cross.get(t, []) for t, w in widths.items()}
        return [io for t in sorted(set(targets)) for io in widths.get(t, [])]

    def lora_parameters(self, rank: int, targets, adapter_type: str = "lora") -> int:
        """Trainable adapter parameters: r x (in + out) per adapted linear (LoRA, rsLoRA); DoRA adds a
        magnitude per output; LoHa has two such pairs; LoKr a Kronecker pair of ~sqrt-sized factors
        (PEFT's factorization, the second one rank r)."""
        def lokr(i, o):
            (o1, o2), (i1, i2) = _factors(o), _factors(i)
            return o1 * i1 + (rank * (o2 + i2) if rank < max(o2, i2) / 2 else o2 * i2)

        per = {"dora": lambda i, o: rank * (i + o) + o, "loha": lambda i, o: 2 * rank * (i + o), "lokr": lokr}
        count = per.get(adapter_type, lambda i, o: rank * (i + o))
        return self.layers * sum(count(i, o) for i, o, _text in self.adapted_linears(targets))


def _factors(dim: int) -> tuple[int, int]:
    """PEFT LoKr's factorization(dim) with its default factor: the divisor pair nearest sqrt(dim),
    smaller first."""
    m = max(d for d in range(1, int(dim ** 0.5) + 1) if dim % d == 0)
    return m, dim // m


@dataclass(frozen=True)
class PlanSettings:
    """What a run asks for, as far as memory goes."""

    precision: str = "fp32"  # what runs: fp32, fp16 or bf16 (mixed precision)
    batch_size: int = 2
    window_seconds: float = 15.0
    gradient_checkpointing: bool = False
    lora_rank: int = 12
    adapter_type: str = "lora"  # --adapter_type (model/targets.py ADAPTER_TYPES)
    targets: tuple = DEFAULT_TARGETS
    lora_dropout: float = 0.05
    cached: bool = True  # False: --no_cache, EnCodec encodes every step
    codec_seconds: float | None = None  # audio per encoded piece (uncached); None: a whole piece (audio.PIECE_SECONDS)
    text_tokens: int = TEXT_TOKENS
    device: str = "cuda"  # where the step runs: cuda[:N] or cpu
    gradient_accumulation_steps: int = 1  # no memory of its own; kept so suggestions keep the global batch

    @property
    def act_bytes(self) -> int:
        return 2 if self.precision in ("fp16", "bf16") else 4

    @property
    def mask_bytes(self) -> int:
        """One dropout-mask element: a bool on CUDA; the CPU keeps a float noise tensor instead."""
        return 1 if self.device.startswith("cuda") else 4


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated peak memory of one training step, in bytes per component (see the module doc)."""

    shape: ModelShape
    settings: PlanSettings
    weights: int
    lora: int  # LoRA weights + gradients + AdamW moments
    activations: int
    weight_copies: int  # half-precision copies of frozen weights autograd keeps (--fp16/--bf16)
    logits: int
    layer_backward: int  # one layer's backward (+ its recompute with checkpointing); after the logits are freed
    codec: int  # EnCodec encode working set (--no_cache); before the forward, not with the activations
    overhead: int
    capacity: int | None = None  # the device's memory (bytes), when known
    enforced: bool = False  # True on CUDA: a plan over the usable memory stops the run

    @property
    def step(self) -> int:
        """What one training step adds above the weights and optimizer state."""
        return max(self.activations + self.weight_copies + max(self.logits, self.layer_backward), self.codec)

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.step + self.overhead

    @property
    def usable(self) -> int | None:
        if self.capacity is None:
            return None
        return int(self.capacity * (1 - CUDA_MARGIN)) if self.enforced else self.capacity

    @property
    def fits(self) -> bool:
        return self.usable is None or self.total <= self.usable

    def asked(self) -> str:
        st = self.settings
        return (f"{st.precision}, batch {st.batch_size} x {st.window_seconds:g} s, checkpointing "
                f"{'on' if st.gradient_checkpointing else 'off'}")

    def describe(self) -> str:
        """One line: `memory plan (cuda:0, fp16, batch 2 x 15 s, checkpointing off): weights 2.2 GiB + ...`."""
        st = self.settings
        step = [f"activations {gib(self.activations)} GiB"]
        if self.weight_copies:
            step.append(f"{st.precision} weight copies {gib(self.weight_copies)} GiB")
        step.append(f"max(logits {gib(self.logits)} GiB, layer backward {gib(self.layer_backward)} GiB)")
        step = " + ".join(step)
        if self.codec:
            step = f"max({step}, EnCodec encode {gib(self.codec)} GiB)"
        of = f" of {gib(self.capacity)} GiB" if self.capacity else ""
        kind = ADAPTER_NAMES.get(st.adapter_type, "LoRA")
        return (f"memory plan ({st.device}, {self.asked()}): weights {gib(self.weights)} GiB + {kind}/optimizer "
                f"{gib(self.lora)} GiB + {step} + overhead {gib(self.overhead)} GiB = {gib(self.total)} GiB{of}")

    def replan(self, **changes) -> MemoryPlan:
        """The same model and device with some settings changed."""
        return _plan(self.shape, dataclasses.replace(self.settings, **changes), self.capacity, self.enforced)


def gib(n: int | float) -> str:
    x = n / GIB
    return f"{x:.2f}" if x < 1 else f"{x:.1f}"


# --------------------------------------------------------------------------------------------
# The model's numbers
# --------------------------------------------------------------------------------------------
def model_shape(model_or_config, decoder_dropout: float | None = None) -> ModelShape:
    """ModelShape of a loaded MusicGen or MusicGen-Melody (LoRA or not, any wrapper) or of its config
    (MusicgenConfig / MusicgenMelodyConfig, instantiated on the meta device: no memory, nothing read)."""
    import torch
    import transformers

    from musicgen_lora.model.checkpoint import MODEL_CLASSES, unwrap_base

    if hasattr(model_or_config, "parameters"):
        model = unwrap_base(model_or_config)
    else:
        with torch.device("meta"):
            model = getattr(transformers, MODEL_CLASSES[model_or_config.model_type])(model_or_config)
    config, dec = model.config, model.config.decoder
    melody = config.model_type == "musicgen_melody"
    frozen = [p for name, p in model.named_parameters() if "lora_" not in name]
    codec = config.audio_encoder
    return ModelShape(
        hidden=dec.hidden_size, layers=dec.num_hidden_layers, heads=dec.num_attention_heads, ffn=dec.ffn_dim,
        vocab=dec.vocab_size, codebooks=dec.num_codebooks, audio_channels=getattr(dec, "audio_channels", 1) or 1,
        cross_hidden=getattr(dec, "cross_attention_hidden_size", None) or dec.hidden_size,
        sample_rate=codec.sampling_rate, hop_length=int(math.prod(codec.upsampling_ratios)),
        codec_filters=codec.num_filters, dropout=dec.dropout if decoder_dropout is None else decoder_dropout,
        activation_dropout=dec.activation_dropout,
        attn_implementation=getattr(dec, "_attn_implementation", None) or "sdpa",
        frozen_parameters=sum(p.numel() for p in frozen),
        weight_bytes=sum(t.numel() * t.element_size() for t in (*frozen, *model.buffers())),
        chroma_length=int(config.chroma_length) if melody else 0,
    )


def longest_text_tokens(tokenizer, texts) -> int:
    """T5 tokens of the longest description (the longest few by characters are tokenized), cut as
    training cuts them (metadata.text_token_limit)."""
    from musicgen_lora.data.metadata import text_token_limit

    longest = sorted((t for t in texts if t), key=len, reverse=True)[:16]
    if not longest:
        return 1  # empty descriptions: the end-of-text token only
    return min(max(len(tokenizer(t)["input_ids"]) for t in longest), text_token_limit(tokenizer))


def sequence_length(shape: ModelShape, window_seconds: float) -> int:
    """Audio positions of one window: its frames plus the delay pattern's K/C - 1."""
    frames = math.ceil(int(round(window_seconds * shape.sample_rate)) / shape.hop_length)
    return frames + shape.codebooks // shape.audio_channels - 1


def prefix_length(shape: ModelShape, text_tokens: int) -> int:
    """Decoder positions before the audio: MusicGen-Melody's chroma frames and text tokens; none in
    text-only MusicGen, whose decoder reads the text through cross-attention."""
    return shape.chroma_length + text_tokens if shape.melody else 0


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def plan_memory(model, *, precision: str = "fp32", batch_size: int = 2, window_seconds: float = 15.0,
                gradient_checkpointing: bool = False, lora_rank: int = 12, targets=DEFAULT_TARGETS,
                cached: bool = True, codec_seconds: float | None = None, lora_dropout: float = 0.05,
                text_tokens: int = TEXT_TOKENS, device="cuda", gradient_accumulation_steps: int = 1,
                capacity: int | None = None, adapter_type: str = "lora") -> MemoryPlan:
    """The plan for a model (loaded, its config, or a ModelShape) on `device` ("cuda", "cuda:1",
    "cpu" or a torch.device). `capacity` (bytes) defaults to the device's own: a CUDA device's memory,
    enforced by check_plan; a CPU's RAM, only reported."""
    shape = model if isinstance(model, ModelShape) else model_shape(model)
    settings = PlanSettings(precision=precision, batch_size=batch_size, window_seconds=float(window_seconds),
                            gradient_checkpointing=gradient_checkpointing, lora_rank=lora_rank,
                            adapter_type=adapter_type, targets=tuple(targets),
                            lora_dropout=lora_dropout, cached=cached, codec_seconds=codec_seconds,
                            text_tokens=text_tokens, device=str(device),
                            gradient_accumulation_steps=gradient_accumulation_steps)
    enforced = settings.device.startswith("cuda")
    if capacity is None:
        capacity = device_memory(settings.device)
    return _plan(shape, settings, capacity, enforced)


def _plan(shape: ModelShape, st: PlanSettings, capacity: int | None, enforced: bool) -> MemoryPlan:
    b, audio, t = st.batch_size, sequence_length(shape, st.window_seconds), st.text_tokens
    prefix = prefix_length(shape, t)
    s = prefix + audio  # every decoder position: the layers run over the prefix too
    n, h, f, a = b * s, shape.hidden, shape.ffn, st.act_bytes
    layer = _layer_bytes(shape, st, b, s, t)
    backward = n * (2 * a * f + 16 * h)  # one layer's backward working set
    if st.gradient_checkpointing:
        kept = shape.layers * n * 4 * h  # each layer's fp32 input
        backward += layer  # the layer recomputed for its backward
        copied_layers = 1
    else:
        kept = shape.layers * layer
        copied_layers = shape.layers
    final_norm = n * (4 * h + 8)
    lora_params = shape.lora_parameters(st.lora_rank, st.targets, st.adapter_type)
    copies = 0
    if a == 2:
        heads = shape.codebooks * h * shape.vocab
        copies = 2 * (copied_layers * shape.linear_weights_per_layer + heads + lora_params)
    codec = 0
    if not st.cached:
        from musicgen_lora.audio.reader import piece_samples

        piece = piece_samples(shape.sample_rate, shape.hop_length)
        if st.codec_seconds is not None:
            piece = min(piece, int(round(st.codec_seconds * shape.sample_rate)))
        codec = CODEC_FULL_RATE_TENSORS * 4 * shape.codec_filters * piece * shape.audio_channels
    return MemoryPlan(shape=shape, settings=st, weights=shape.weight_bytes, lora=16 * lora_params,
                      activations=kept + final_norm, weight_copies=copies,
                      logits=_logits_bytes(shape, a, b, audio, prefix), layer_backward=backward, codec=codec,
                      overhead=OVERHEAD["cuda" if st.device.startswith("cuda") else "cpu"], capacity=capacity,
                      enforced=enforced)


def _logits_bytes(shape: ModelShape, a: int, b: int, audio: int, prefix: int) -> int:
    """Logits and loss at their peak (module doc): the backward's start over the audio positions plus
    the prefix's zero gradient, or the forward's head outputs and their stack over every position."""
    per_position = max(LOGITS_BYTES * audio + a * prefix, 2 * a * (prefix + audio))
    return b * shape.codebooks * shape.vocab * per_position


def _layer_bytes(shape: ModelShape, st: PlanSettings, b: int, s: int, t: int) -> int:
    """Bytes autograd keeps for one decoder layer (module doc): b clips, s decoder positions (the
    prefix included), t text tokens."""
    h, f, r, a, mask = shape.hidden, shape.ffn, st.lora_rank, st.act_bytes, st.mask_bytes
    n, m = b * s, b * t
    drop = mask if shape.dropout > 0 else 0
    lora_mask = mask if st.lora_dropout > 0 else 0

    def lora(names, rows, width):  # LoRA'd linears in `names` reading one (rows x width) input
        k = sum(name in st.targets for name in names)
        copies = k if (st.lora_dropout > 0 or a < 4) else min(k, 1)
        return rows * (width * (copies * a + k * lora_mask) + k * r * a)

    norm, lse = n * (4 * h + 8), n * 4 * shape.heads
    self_attn = norm + lora(SELF_ATTN, n, h) + 4 * a * n * h + lse + lora(("out_proj",), n, h) + drop * n * h
    cross = 0 if shape.melody else (norm + lora(("q_proj",), n, h) + lora(CROSS_KV, m, shape.cross_hidden)
                                     + 2 * a * (n + m) * h + lse + lora(("out_proj",), n, h) + drop * n * h)
    ffn = (norm + lora(("fc1",), n, h) + a * n * f + (mask if shape.activation_dropout > 0 else 0) * n * f
           + lora(("fc2",), n, f) + drop * n * h)
    cross_scores = 0 if shape.melody else s * t
    eager = a * b * shape.heads * (s * s + cross_scores) if shape.attn_implementation == "eager" else 0
    return self_attn + cross + ffn + eager + _adapter_type_bytes(shape, st, n, m)


def _adapter_type_bytes(shape: ModelShape, st: PlanSettings, n: int, m: int) -> int:
    """What DoRA, LoHa or LoKr keep for one layer beyond LoRA's count (module doc): n decoder and m
    text positions. LoHa/LoKr keep no r-wide output, which LoRA's count includes: taken off again."""
    if st.adapter_type in ("lora", "rslora"):
        return 0
    linears = [(m if text else n, i, o) for i, o, text in shape.adapted_linears(st.targets)]
    if st.adapter_type == "dora":
        return sum(2 * st.act_bytes * rows * o for rows, _i, o in linears)
    return sum(4 * i * o - rows * st.lora_rank * st.act_bytes for rows, i, o in linears)


# --------------------------------------------------------------------------------------------
# The device, the check, the settings that fit
# --------------------------------------------------------------------------------------------
def device_memory(device) -> int | None:
    """Bytes of memory on a CUDA device, or the machine's RAM for the CPU (None when unknown)."""
    device = str(device)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return total_ram_bytes()


def half_precision(device) -> str:
    """The mixed precision to suggest on this GPU: bf16 where it has it, else fp16."""
    import torch

    return "bf16" if str(device).startswith("cuda") and torch.cuda.is_available() and \
        torch.cuda.is_bf16_supported() else "fp16"


def suggest(plan: MemoryPlan, half: str = "bf16") -> tuple[MemoryPlan, bool]:
    """(settings that fit, True) -- fewest changes first: mixed precision, then checkpointing, then a
    smaller micro-batch with accumulation raised to keep the global batch; a shorter window only as a
    last resort. (The smallest plan tried, False) when nothing fits."""
    st = plan.settings
    global_batch = st.batch_size * st.gradient_accumulation_steps
    checkpointing = sorted({st.gradient_checkpointing, True})
    precisions = [st.precision] + ([half] if st.precision == "fp32" and plan.enforced else [])
    batches = [b for b in range(st.batch_size, 0, -1) if b == st.batch_size or global_batch % b == 0]
    # Shares of the asked window, and MusicGen's own windows (30 s, and the usual 15 and 10 s): a window
    # asked far past them (a typo) gets an answer that fits.
    windows = [st.window_seconds] + sorted({float(w) for w in [*(round(st.window_seconds * x) for x in
                                           (0.8, 0.6, 0.5, 0.4, 0.3, 0.2)), 30, 15, 10]
                                           if 1 <= w < st.window_seconds}, reverse=True)
    tried = []
    for ckpt, precision, batch, window in itertools.product(checkpointing, precisions, batches, windows):
        changes = (ckpt != st.gradient_checkpointing, precision != st.precision, batch != st.batch_size)
        key = (window < st.window_seconds, -window, sum(changes), changes[2], -batch, changes[0])
        tried.append((key, plan.replan(gradient_checkpointing=ckpt, precision=precision, batch_size=batch,
                                       gradient_accumulation_steps=max(1, global_batch // batch),
                                       window_seconds=window)))
    tried.sort(key=lambda kv: kv[0])
    fitting = [p for _, p in tried if p.fits]
    if fitting:
        return fitting[0], True
    return min((p for _, p in tried), key=lambda p: p.total), False


def flags_for(new: MemoryPlan, old: MemoryPlan) -> str:
    """train_lora.py flags that turn `old`'s settings into `new`'s."""
    a, b = old.settings, new.settings
    flags = []
    if b.precision != a.precision:
        flags.append(f"--{b.precision}")
    if b.gradient_checkpointing and not a.gradient_checkpointing:
        flags.append("--gradient_checkpointing")
    if b.batch_size != a.batch_size:
        flags.append(f"--batch_size {b.batch_size} --gradient_accumulation_steps {b.gradient_accumulation_steps}")
    if b.window_seconds != a.window_seconds:
        flags.append(f"--target_duration {b.window_seconds:g}")
    return " ".join(flags)


# A CPU plan this many times the machine's RAM cannot run, swap or not: it is refused (--ignore_memory_plan
# still starts it).
CPU_REFUSE_FACTOR = 16


def check_plan(plan: MemoryPlan, ignore: bool = False, half: str | None = None):
    """Stop (UserError, one line: what was asked, what the device has, flags that fit) when a CUDA plan
    exceeds the device's usable memory; with `ignore` (--ignore_memory_plan), warn and go on. A CPU
    plan past the RAM is a warning (swap may carry it), but one past CPU_REFUSE_FACTOR x the RAM stops
    like a GPU plan: a typo such as --target_duration 1e9 ended in an allocator traceback."""
    if plan.fits:
        return
    if not plan.enforced and plan.total <= CPU_REFUSE_FACTOR * plan.capacity:
        log.warning(f"warning: the memory plan ({gib(plan.total)} GiB) is more than this machine's "
                    f"{gib(plan.capacity)} GiB of RAM; the run may swap or be killed")
        return
    fix, fits = suggest(plan, half or half_precision(plan.settings.device))
    if fits:
        advice = f"these settings fit: {flags_for(fix, plan)} (about {gib(fix.total)} GiB)"
    else:
        advice = (f"nothing fits, not even {flags_for(fix, plan)} (about {gib(fix.total)} GiB; the weights alone "
                  f"take {gib(plan.weights)} GiB): use a smaller model or a GPU with more memory")
    kind = "MusicGen-Melody" if plan.shape.melody else "MusicGen"
    message = (f"memory plan: the {plan.shape.frozen_parameters / 1e9:.2f} B-parameter {kind} at {plan.asked()} "
               f"needs about {gib(plan.total)} GiB, but {plan.settings.device} has {gib(plan.capacity)} GiB "
               f"({gib(plan.usable)} GiB usable); {advice}")
    if ignore:
        log.warning(f"warning: {message}; starting anyway (--ignore_memory_plan; the plan is an estimate)")
        return
    raise UserError(f"{message}; or pass --ignore_memory_plan to start anyway (the plan is an estimate)")
