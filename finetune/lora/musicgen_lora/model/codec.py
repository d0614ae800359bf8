"""Audio to EnCodec codes with the model's own codec: a clip's pieces, every channel, the same codes
alone or batched."""
import contextlib
import functools

import torch

from musicgen_lora.audio.codes import interleave_channels
from musicgen_lora.model.checkpoint import (
    model_info,
    unwrap_base,
)


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

