"""Teacher-forced training loss: a batch's codes, its delay-pattern labels, the decoder's logits, and
the token-weighted held-out loss every script reports."""

import torch
from tqdm.auto import tqdm

from musicgen_lora.audio.codes import build_delay_pattern_labels, crop_codes
from musicgen_lora.core.common import UserError
from musicgen_lora.model.checkpoint import is_melody, model_info
from musicgen_lora.model.codec import encode_pieces, split_pieces


def codes_for_batch(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (B, K, T), valid frames (B,)) of a batch: from the cache when it carries `codes`, else by
    encoding the pieces under each row's window of `audio` (B, C, samples) and cropping the window the
    dataset picked (audio.codes.crop_codes)."""
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
                        f"({info['audio_channels']} audio channel(s)); the codes were stored for another layout: "
                        f"delete that code store")
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

    from musicgen_lora.audio.chroma import null_chroma

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

