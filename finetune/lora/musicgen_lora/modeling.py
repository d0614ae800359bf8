"""Model plumbing: load MusicGen, attach/load LoRA, encode audio to codes, teacher-forced loss."""
import contextlib
import functools
import math
import os
import types
from pathlib import Path

import torch
from tqdm.auto import tqdm

from musicgen_lora.codes import build_delay_pattern_labels, crop_codes, interleave_channels
from musicgen_lora.common import UserError, read_json
from musicgen_lora.training.config import DEFAULT_TARGETS

# model_type in config.json -> the transformers class that loads it (one path for every script).
MODEL_CLASSES = {"musicgen": "MusicgenForConditionalGeneration",
                 "musicgen_melody": "MusicgenMelodyForConditionalGeneration"}


class TokenizerOnly:
    """What the toolkit uses of a processor when the checkpoint's own cannot load: MusicGen-Melody's
    needs torchaudio (not installable beside the pinned torch); its chroma comes from chroma.py."""

    def __init__(self, tokenizer, source):
        self.tokenizer, self.source = tokenizer, Path(source)

    def save_pretrained(self, folder):
        import shutil

        self.tokenizer.save_pretrained(folder)
        if (self.source / "preprocessor_config.json").is_file():
            shutil.copy(self.source / "preprocessor_config.json", Path(folder) / "preprocessor_config.json")


@contextlib.contextmanager
def _loading(model_path: str, flag: str):
    """What from_pretrained raises for a path that is not a loadable MusicGen, as one line."""
    try:
        yield
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{model_path}: cannot load MusicGen ({first}); check {flag} "
                        f"(offline machines need a local folder)") from None
    except (ValueError, KeyError) as e:
        raise UserError(f"{model_path}: not a MusicGen checkpoint ({e})") from None


def model_type_of(model_path: str, flag: str = "--model_path") -> str:
    from transformers import AutoConfig

    with _loading(model_path, flag):
        model_type = AutoConfig.from_pretrained(model_path).model_type
    if model_type not in MODEL_CLASSES:
        raise UserError(f"{model_path}: a {model_type!r} checkpoint, not MusicGen; pass {flag} a MusicGen or "
                        f"MusicGen-Melody folder")
    return model_type


def load_model_and_processor(model_path: str, device: str = "cpu", dtype=None, flag: str = "--model_path",
                             decoder_dropout: float | None = None):
    """from_pretrained for a local folder or a hub id, text-only MusicGen or MusicGen-Melody (by the
    config's model_type); a bad path is one clear line.

    decoder_dropout: the decoder's own dropout (embeddings and every residual branch) for training;
    None keeps the checkpoint's. The hub's MusicGen configs say 0.1 (transformers' default, written by
    the conversion), but audiocraft trained every MusicGen with 0 (config/model/lm/default.yaml,
    transformer_lm.dropout); at 0.1 the tiny melody model never learned to follow its chroma.
    """
    import transformers

    p = Path(model_path)
    looks_local = p.is_absolute() or model_path.startswith((".", "~")) or p.exists() or model_path.count("/") != 1
    if looks_local and not p.is_dir():
        raise UserError(f"{model_path}: model folder not found; pass {flag} a local MusicGen folder "
                        f"(config.json + weights) or a hub id like facebook/musicgen-small")
    if p.is_dir() and not (p / "config.json").is_file():
        raise UserError(f"{model_path}: no config.json here; point {flag} at the MusicGen folder itself")
    model_class = getattr(transformers, MODEL_CLASSES[model_type_of(model_path, flag)])
    with _loading(model_path, flag):
        config = transformers.AutoConfig.from_pretrained(model_path)
        if decoder_dropout is not None:  # read by the decoder's modules when they are built
            config.decoder.dropout = float(decoder_dropout)
        model = model_class.from_pretrained(model_path, config=config, dtype=dtype)
        try:
            processor = transformers.AutoProcessor.from_pretrained(model_path)
        except ImportError:  # MusicgenMelodyProcessor without torchaudio
            processor = TokenizerOnly(transformers.AutoTokenizer.from_pretrained(model_path), model_path)
    check_codebooks(model, model_path)
    model.to(device)
    return model, processor


def is_melody(model) -> bool:
    """A MusicGen-Melody model (chroma + text prefix, no cross-attention)."""
    return unwrap_base(model).config.model_type == "musicgen_melody"


def check_codebooks(model, model_path):
    """The decoder's codebooks must be the codec's times the audio channels (4 mono, 8 stereo): any
    other checkpoint would build labels of one layout and die in the forward with a shape error."""
    dec, codec = model.decoder.config, model.config.audio_encoder
    channels = int(getattr(dec, "audio_channels", 1) or 1)
    if codec.num_quantizers * channels != dec.num_codebooks:
        raise UserError(f"{model_path}: inconsistent MusicGen checkpoint: the decoder predicts {dec.num_codebooks} "
                        f"codebooks but its EnCodec gives {codec.num_quantizers} per channel x {channels} channel(s); "
                        f"fix decoder.num_codebooks / audio_channels in config.json or use another checkpoint")


def unwrap_base(model):
    """The MusicGen under a PeftModel and/or a DistributedDataParallel wrapper (multi-process runs)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "get_base_model", lambda: model)()


def model_info(model) -> dict:
    """Numbers every script needs: codebooks, audio channels, vocab, sample rate, hop length, frame rate."""
    base = unwrap_base(model)
    codec = base.config.audio_encoder
    hop = int(math.prod(codec.upsampling_ratios))
    return {
        "num_codebooks": base.decoder.config.num_codebooks,
        # Stereo checkpoints: 2, the mono codec run per channel, codebooks interleaved [L0, R0, ...].
        "audio_channels": int(getattr(base.decoder.config, "audio_channels", 1) or 1),
        "vocab_size": base.decoder.config.vocab_size,
        "sample_rate": codec.sampling_rate,
        "hop_length": hop,
        "frame_rate": codec.sampling_rate / hop,
        "pad_token_id": base.decoder.config.pad_token_id,
        # make_tiny_model.py marks its random-weight checkpoints; their loss sits at ln(vocab) by design.
        "random_weights": bool(getattr(base.config, "random_weights_test_model", False)),
        # MusicGen-Melody: the chroma frames its prefix holds (235, ~30 s); None for text-only MusicGen.
        "chroma_length": int(base.config.chroma_length) if is_melody(base) else None,
        "decoder_start_token_id": base.config.decoder.decoder_start_token_id
        if getattr(base.config.decoder, "decoder_start_token_id", None) is not None
        else base.generation_config.decoder_start_token_id,
    }


def model_layout(model) -> dict:
    """What an adapter, a checkpoint or a code cache must agree on with the base model it meets:
    the code layout (codebooks, channels, vocabulary) and the decoder's shape (its size)."""
    base = unwrap_base(model)
    dec = base.decoder.config
    return {"model_type": base.config.model_type, "num_codebooks": dec.num_codebooks,
            "audio_channels": model_info(base)["audio_channels"],
            "vocab_size": dec.vocab_size, "hidden_size": dec.hidden_size, "num_hidden_layers": dec.num_hidden_layers}


def describe_layout(layout: dict) -> str:
    channels = {1: "mono", 2: "stereo"}.get(layout.get("audio_channels", 1), f"{layout['audio_channels']}-channel")
    if layout.get("model_type") == "musicgen_melody":
        channels = f"melody ({channels})"
    return (f"{channels}, {layout['num_codebooks']} codebooks, decoder {layout['hidden_size']} wide x "
            f"{layout['num_hidden_layers']} layers")


def check_layout(recorded: dict | None, current: dict, what: str, fix: str):
    """One line before any forward when `recorded` (an adapter's or checkpoint's model layout) is not
    the base model's: a mono adapter on a stereo base would otherwise load (LoRA shapes depend only on
    the decoder's width) and quietly mean nothing; other sizes die in a shape error."""
    if not isinstance(recorded, dict):
        return  # written before layouts were recorded, or not by train_lora.py: PEFT's own checks apply
    if any(recorded.get(k) != v for k, v in current.items() if k in recorded):
        raise UserError(f"{what} was trained on a {describe_layout({**current, **recorded})} MusicGen, but the base "
                        f"model is {describe_layout(current)}; {fix}")


def lora_target_regex(target_modules) -> str:
    names = "|".join(sorted(set(target_modules)))
    # Module keys look like decoder.model.decoder.layers.3.self_attn.q_proj
    return rf"^(.*\.)?decoder\.model\.decoder\.layers\.\d+\.(.*\.)?({names})$"


def _stay_in_eval_mode(self, mode=True):
    return torch.nn.Module.train(self, False)


def apply_lora(model, rank: int, alpha: float, dropout: float, target_modules=DEFAULT_TARGETS):
    """Freeze everything, add LoRA to the decoder's linear layers only.

    The frozen T5 text encoder stays in eval mode: in train mode its dropout would feed the decoder
    a randomly perturbed description every step (audiocraft keeps its T5 in eval mode too).
    """
    from peft import LoraConfig, get_peft_model

    for param in model.parameters():
        param.requires_grad_(False)
    # Pinned to eval mode (T5 also applies functional dropout inside attention, so zeroing Dropout
    # modules is not enough); model.train() reaches children through this per-instance override.
    model.text_encoder.eval()
    model.text_encoder.train = types.MethodType(_stay_in_eval_mode, model.text_encoder)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=lora_target_regex(target_modules), bias="none")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"--lora_target_modules {','.join(target_modules)}: {e}") from None
    return peft_model


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_dir(path) -> Path:
    """A PEFT adapter folder this toolkit loads, or one clear line saying what the folder is instead."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not an adapter folder" if path.exists() else "adapter folder not found"
        raise UserError(f"{path}: {what}; pass a best_model/, final_model/ or checkpoints/checkpoint-N/ folder "
                        f"written by train_lora.py")
    if not (path / "adapter_config.json").is_file():
        inside = [path / name for name in ("best_model", "final_model")
                  if (path / name / "adapter_config.json").is_file()]
        if inside:
            raise UserError(f"{path}: this is a training run directory, not an adapter; pass {inside[0]} (or use "
                            f"evaluate.py --compare_multi --lora_model_path {path})")
        raise UserError(f"{path}: no adapter_config.json here, so it is not a PEFT adapter; pass a best_model/, "
                        f"final_model/ or checkpoints/checkpoint-N/ folder written by train_lora.py")
    read_json(path / "adapter_config.json", "adapter config")
    if not (path / ADAPTER_WEIGHTS).is_file():
        if (path / "adapter_model.bin").is_file():
            # finetune/scripts/convert_adapter.py, as a path that works from where the user is
            script = os.path.relpath(Path(__file__).resolve().parents[2] / "scripts" / "convert_adapter.py")
            raise UserError(f"{path}: holds adapter_model.bin, a pickle, which this toolkit never loads (unpickling "
                            f"can run code); convert an adapter you trust with: python {script} {path}")
        raise UserError(f"{path}: adapter_config.json but no {ADAPTER_WEIGHTS}; the adapter was not saved "
                        f"completely: pass another adapter folder")
    return path


def load_adapter(base_model, adapter_path, adapter_name: str = "default", is_trainable=False, into=None):
    """PeftModel.from_pretrained (or, with `into`, one more adapter on that PeftModel), with one clear
    line for a folder that is not a safetensors adapter of this base model."""
    from peft import PeftModel

    path = check_adapter_dir(adapter_path)
    info = read_json(path / "training_info.json", "training info") if (path / "training_info.json").is_file() else {}
    trained_on = read_json(path / "adapter_config.json").get("base_model_name_or_path")
    check_layout(info.get("model"), model_layout(base_model), str(path),
                 f"pass the base model it was trained on ({trained_on}) or an adapter trained on this one")
    try:
        if into is not None:
            into.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
            return into
        return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name, is_trainable=is_trainable)
    except Exception as e:  # a user's file: shape mismatch, wrong targets, corrupt weights
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if any(w in str(e) for w in ("size mismatch", "shape", "Target modules", "not found in the base model")):
            raise UserError(f"{path}: adapter does not fit this base model (trained on {trained_on!r}): "
                            f"{first}") from None
        raise UserError(f"{path}: cannot load this adapter ({type(e).__name__}: {first}); pass another adapter "
                        f"folder") from None


# --------------------------------------------------------------------------------------------
# Codes and loss
# --------------------------------------------------------------------------------------------
def _forward_on_two_rows(lstm: torch.nn.LSTM, x: torch.Tensor, hx=None):
    """nn.LSTM.forward, with a one-row input run beside a row of zeros (see _lstms_on_two_rows)."""
    dim = 0 if lstm.batch_first else 1
    if hx is not None or x.dim() != 3 or x.shape[dim] != 1:
        return torch.nn.LSTM.forward(lstm, x, hx)
    out, (h, c) = torch.nn.LSTM.forward(lstm, torch.cat([x, torch.zeros_like(x)], dim=dim))
    return out.narrow(dim, 0, 1), (h[:, :1], c[:, :1])


@contextlib.contextmanager
def _lstms_on_two_rows(codec):
    """While encoding, every LSTM of the codec runs on at least two rows.

    Why: on a CPU (oneDNN, torch 2.13), an LSTM call over ONE row takes another kernel path than a
    call over two or more and rounds differently: about 2 codes in 100,000 flipped (near-ties between
    codebook entries). Over two or more rows, each row comes out bit-identical whatever the rows beside
    it and however many there are (measured on musicgen-small's codec and the tiny one, 1 and 2
    threads); the convolutions and the quantizer are row-independent at any count. So a clip's codes
    are the same alone, beside its other channel or in a batch of other clips: batched encoding
    (encoding.encode_batched) gives exactly encode_pieces' codes. The price, for a mono piece encoded
    alone: musicgen-small's LSTM took 2.3 s instead of 0.8 s per 15 s on one CPU thread (eight rows:
    3.2 s); stereo pieces already run two rows. Not measured on a GPU.
    """
    lstms = [m for m in codec.modules() if isinstance(m, torch.nn.LSTM) and "forward" not in vars(m)]
    for lstm in lstms:  # an instance attribute: only this codec, only inside this block
        lstm.forward = functools.partial(_forward_on_two_rows, lstm)
    try:
        yield
    finally:
        for lstm in lstms:
            del lstm.forward


@torch.no_grad()
def encode_audio(model, audio: torch.Tensor) -> torch.Tensor:
    """(B, N) float audio -> (B, K, T) EnCodec codes with the model's own codec (frozen); each row's
    codes do not depend on the other rows or on B (_lstms_on_two_rows).

    Always in the codec's own dtype with autocast off: codes must not depend on --fp16/--bf16, or
    cached and uncached training would see different tokens.
    """
    base = unwrap_base(model)
    codec = base.audio_encoder
    param = next(codec.parameters())
    with torch.autocast(device_type=param.device.type, enabled=False), _lstms_on_two_rows(codec):
        out = codec.encode(audio.unsqueeze(1).to(param.device, param.dtype))
    codes = out.audio_codes  # (chunks=1, B, K, T)
    if codes.shape[0] != 1:
        raise ValueError("EnCodec returned several chunks; MusicGen's codec must not chunk")
    return codes[0]


def channel_rows(model, piece) -> torch.Tensor:
    """One piece, (n,) or (C, n) with C the model's audio channels -> (C, n): the mono clips the codec
    encodes, one per channel."""
    piece = torch.as_tensor(piece)
    piece = piece.reshape(1, -1) if piece.dim() == 1 else piece
    channels = model_info(model)["audio_channels"]
    if piece.shape[0] != channels:
        raise ValueError(f"audio has {piece.shape[0]} channels, the model {channels} (audio.AudioPieces sets them)")
    return piece


def encode_same_length(model, pieces) -> list[torch.Tensor]:
    """Pieces of one length ((n,) or (C, n) each) -> their codes (K, T), in ONE codec call: every
    channel of every piece is a row of the batch, so nothing is padded, and each piece's codes are
    exactly those it gets alone (encode_audio). Rows are interleaved [L0, R0, L1, ...] per piece, as
    generate() does."""
    rows = [channel_rows(model, piece) for piece in pieces]
    if len({r.shape[-1] for r in rows}) > 1:
        raise ValueError("pieces of different lengths: padding would change the shorter ones' last frames")
    codes = encode_audio(model, torch.cat(rows))  # (pieces x C, K_c, T)
    c = rows[0].shape[0]
    return [interleave_channels(list(codes[i * c:(i + 1) * c])) for i in range(len(rows))]


def encode_channels(model, piece) -> torch.Tensor:
    """One piece, (n,) or (C, n) with C the model's audio channels -> codes (K, T): each channel
    through the mono codec, rows interleaved [L0, R0, L1, ...] as generate() does."""
    return encode_same_length(model, [piece])[0]


def encode_pieces(model, pieces) -> torch.Tensor:
    """A clip's pieces (audio.AudioPieces: ~30 s each, in order) -> codes (K, T), each piece
    encoded on its own, so memory follows the piece and zero-padding can never change a clip's last
    frames. encoding.encode_batched gives the same codes for many clips at once."""
    return torch.cat([encode_channels(model, piece) for piece in pieces], dim=-1)


def split_pieces(wav: torch.Tensor, piece: int) -> list[torch.Tensor]:
    return [wav[..., i:i + piece] for i in range(0, wav.shape[-1], piece)]


def codes_for_batch(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (B, K, T), valid frames (B,)) of a batch: from the cache when it carries `codes`, else by
    encoding the pieces under each row's window of `audio` (B, C, samples) and cropping the window the
    dataset picked (dataset.crop_codes)."""
    if "codes" in batch:
        return batch["codes"], batch["num_frames"]
    hop = model_info(model)["hop_length"]
    audio, b = batch["audio"], batch["audio"].shape[0]
    lengths = batch["audio_samples"].tolist() if "audio_samples" in batch else batch["num_samples"].tolist()
    clip_lengths = batch["num_samples"].tolist()
    offsets = batch["frame_offset"].tolist() if "frame_offset" in batch else [0] * b
    starts = batch["audio_start_frame"].tolist() if "audio_start_frame" in batch else [0] * b
    pieces = batch["piece_samples"].tolist() if "piece_samples" in batch else [audio.shape[-1]] * b
    window = int(batch["window_frames"][0]) if "window_frames" in batch else -(-audio.shape[-1] // hop)
    rows, valid = [], []
    for i in range(b):
        encoded = encode_pieces(model, split_pieces(audio[i, ..., :lengths[i]], pieces[i]))
        codes, n_valid = crop_codes(encoded, clip_lengths[i], offsets[i], window, hop, codes_start_frame=starts[i])
        rows.append(torch.nn.functional.pad(codes, (0, window - codes.shape[1])))
        valid.append(n_valid)
    codes = torch.stack(rows)
    return codes, torch.tensor(valid, dtype=torch.long, device=codes.device)


def labels_for_batch(model, batch) -> torch.Tensor:
    """Batch -> delay-pattern labels with padded frames masked (the only route to labels)."""
    codes, valid = codes_for_batch(model, batch)
    info = model_info(model)
    if codes.shape[1] != info["num_codebooks"]:  # a cache or batch built for another layout: never a shape error
        raise UserError(f"the batch holds {codes.shape[1]} codebooks, the model {info['num_codebooks']} "
                        f"({info['audio_channels']} audio channel(s)); delete the code cache or pass --no_cache")
    return build_delay_pattern_labels(codes, valid.to(codes.device), info["audio_channels"])


def masked_token_nll(logits: torch.Tensor, labels: torch.Tensor):
    """Per-codebook summed NLL and counts over labels != -100.

    logits: (B*K, S, V) as MusicGen returns them; labels: (B, S, K).
    Summing (not averaging) lets callers weight every real token equally across batches.
    """
    b, s, k = labels.shape
    logits = logits.reshape(b, k, s, -1).float()
    target = labels.permute(0, 2, 1)  # (B, K, S)
    nll = torch.nn.functional.cross_entropy(logits.permute(0, 3, 1, 2), target.clamp_min(0), reduction="none")
    mask = target != -100
    nll = nll * mask
    return nll.sum(dim=(0, 2)), mask.sum(dim=(0, 2))


def forward_logits(model, batch, labels, text_dropout: float = 0.0, generator=None):
    """Teacher-forced decoder logits. text_dropout drops whole conditions, as audiocraft's
    classifier-free-guidance dropout does: the description (zero attention mask -> zero states) and,
    on MusicGen-Melody, the melody too (the null chroma) -- exactly the unconditional half that
    guidance pairs with each prompt at generation time."""
    from transformers.models.musicgen.modeling_musicgen import shift_tokens_right

    from musicgen_lora.chroma import null_chroma

    info = model_info(model)
    device = labels.device
    attention_mask = batch["attention_mask"].to(device)
    drop = torch.zeros(attention_mask.shape[0], dtype=torch.bool)
    if text_dropout > 0:
        drop = torch.rand(attention_mask.shape[0], generator=generator) < text_dropout
        attention_mask = attention_mask * (~drop).to(device, attention_mask.dtype)[:, None]
    decoder_input_ids = shift_tokens_right(labels, info["pad_token_id"], info["decoder_start_token_id"])
    b, k, s = decoder_input_ids.shape
    extra = {}
    if is_melody(model) and batch.get("input_features") is not None:  # (B, frames, 12) chroma; none: the null one
        features = batch["input_features"].to(device)
        if drop.any():
            features = features.clone()
            features[drop.to(device)] = null_chroma(features.shape[1], features.shape[2]).to(features)
        extra["input_features"] = features
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids.reshape(b * k, s), **extra)
    # MusicGen-Melody's logits cover its [chroma, text] prefix too: the audio positions are the last s.
    return out.logits[:, -s:]


def batch_loss(model, batch, text_dropout: float = 0.0, generator=None, labels=None):
    """Mean NLL per real label token; also returns the token count (for throughput)."""
    if labels is None:
        labels = labels_for_batch(model, batch)
    logits = forward_logits(model, batch, labels, text_dropout, generator)
    nll, count = masked_token_nll(logits, labels)
    total = count.sum()
    return nll.sum() / total.clamp_min(1), int(total)


@torch.no_grad()
def evaluate_loss(model, loader, autocast=None, desc="valid", progress=True, reduce=None) -> dict:
    """Held-out teacher-forced loss, token-weighted, overall and per codebook (no dropout, no text
    dropout). The same function gives step-0, per-epoch and evaluate.py's held-out numbers.
    `reduce` (multi-process runs) sums the per-codebook NLL and token counts over all ranks, each of
    which saw its own shard of the loader."""
    import contextlib

    was_training = model.training
    model.eval()
    k = model_info(model)["num_codebooks"]
    nll_sum, count_sum = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.long)
    ctx = autocast or contextlib.nullcontext
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        labels = labels_for_batch(model, batch)
        with ctx():
            logits = forward_logits(model, batch, labels)
        nll, count = masked_token_nll(logits, labels)
        nll_sum += nll.detach().cpu().double()
        count_sum += count.cpu()
    if was_training:
        model.train()
    if reduce is not None:
        nll_sum, count_sum = reduce(nll_sum), reduce(count_sum)
    if count_sum.sum() == 0:
        return {"loss": float("nan"), "per_codebook": [], "tokens": 0}
    per_cb = (nll_sum / count_sum.clamp_min(1)).tolist()
    return {"loss": float(nll_sum.sum() / count_sum.sum()), "per_codebook": per_cb,
            "tokens": int(count_sum.sum())}
