"""Loading a MusicGen checkpoint (text-only or melody, mono or stereo) and what every script reads of it:
its code layout, sample rate, frame rate; one line for a checkpoint that cannot work."""
import contextlib
import math
from pathlib import Path

import torch

from musicgen_lora.core.common import UserError

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


HUB_HOST, HUB_TIMEOUT_S = "huggingface.co", 3.0


def check_hub_reachable(repo_id: str, flag: str):
    """A hub id that is not in the local Hugging Face cache needs the hub. Offline, transformers spends
    ~40 s retrying before its error; one connection attempt says the same in seconds."""
    import os
    import socket

    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return  # cached: from_pretrained can load it offline
    except Exception:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if not offline:
        try:
            socket.create_connection((HUB_HOST, 443), timeout=HUB_TIMEOUT_S).close()
            return
        except OSError:
            pass
    why = "HF_HUB_OFFLINE is set" if offline else f"{HUB_HOST} cannot be reached (offline?)"
    raise UserError(f"{flag} {repo_id}: not a local folder, not in the Hugging Face cache, and {why}; pass {flag} a "
                    f"local MusicGen folder (config.json + weights), e.g. finetune/models/tiny-musicgen, which "
                    f"./quick_start.sh builds offline")


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
    if not looks_local:
        check_hub_reachable(model_path, flag)
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

