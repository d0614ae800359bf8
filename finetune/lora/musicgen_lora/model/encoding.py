"""Batched EnCodec encoding of many clips: several pieces per codec call, each clip's codes exactly
model.codec.encode_pieces' (the one-at-a-time definition).

Clips come as their ~30 s pieces (audio.AudioPieces), and a clip's codes are defined piece by piece.
Only pieces of the SAME length share a codec call (a bucket per length: the full pieces of long
tracks, the 15 s segments data preparation writes, each odd last piece): zero-padding a shorter piece
would change its last frames, since EnCodec's convolutions see past its end. Within a call every
channel of every piece is a row, and a row's codes do not depend on its neighbours
(model.codec._lstms_on_two_rows), so batched codes equal one-at-a-time codes bit for bit.

Memory: pieces are pulled lazily from the caller's iterators and at most `batch_size` are held at
once: when that many are waiting, the bucket holding the oldest piece is encoded (so a piece with no
partner waits for fewer than `batch_size` such calls, and a long track is never one tensor). On
musicgen-small's codec, 8 pieces of 15 s per call peaked at 6.8 GiB resident on a CPU against 4.3 GiB
one at a time (benchmarks/encoding.py). Codes come back in input order; the codes of clips that
finish early wait, small, for the clips before them.

Speed: on a GPU a call over many rows should cost little more than over one (the LSTM steps through
a piece one frame at a time, a few small kernels per frame), so it encodes 8 pieces per call by
default; not measured, no GPU was lent to this work. On a CPU batching lost every time it was
measured (2 cores, benchmarks/encoding.py, 15 s clips, throughput batched / one at a
time): musicgen-small's codec 0.62x at batch 8 and 0.94x at batch 2 with 2 threads, 0.86x at batch 8
with 1 thread; the tiny codec 0.38-0.68x. And 2 pieces per call doubled the codec's share of peak
memory (tests/test_limits.py: a 20-minute clip's cache fill took +235 MB instead of +90 MB on the
tiny codec). So a CPU encodes 1 piece per call by default.
"""
from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable, Iterator

import torch

from musicgen_lora.model.checkpoint import unwrap_base
from musicgen_lora.model.codec import encode_same_length

# Pieces per codec call by default (a stereo piece is two rows); why these: module doc.
GPU_BATCH_SIZE, CPU_BATCH_SIZE = 8, 1


def default_batch_size(model) -> int:
    codec_device = next(unwrap_base(model).audio_encoder.parameters()).device
    return GPU_BATCH_SIZE if codec_device.type == "cuda" else CPU_BATCH_SIZE


class _Clip:
    """A clip being encoded: its key, its pieces' codes as they arrive, how many are still out."""

    def __init__(self, key):
        self.key, self.codes, self.waiting, self.all_pulled = key, [], 0, False

    def done(self) -> bool:
        return self.all_pulled and self.waiting == 0


class _Buckets:
    """Pieces waiting for a codec call, grouped by length, at most `batch_size` of them in all."""

    def __init__(self, model, batch_size: int):
        self.model, self.batch_size = model, batch_size
        # length -> [(clip, piece index, piece)]; a dict keeps insertion order, so the first bucket
        # is the one holding the oldest piece.
        self.by_length: dict[int, list] = {}
        self.held = 0

    def add(self, clip: _Clip, piece):
        piece = torch.as_tensor(piece)
        clip.codes.append(None)
        clip.waiting += 1
        self.by_length.setdefault(piece.shape[-1], []).append((clip, len(clip.codes) - 1, piece))
        self.held += 1
        if self.held >= self.batch_size:
            # The bucket with the oldest piece: the only one when it is full, and no piece waits long.
            self.flush(next(iter(self.by_length)))

    def flush(self, length: int):
        waiting = self.by_length.pop(length)
        self.held -= len(waiting)
        codes = encode_same_length(self.model, [piece for *_, piece in waiting])
        for (clip, index, _), piece_codes in zip(waiting, codes):
            clip.codes[index] = piece_codes.cpu()
            clip.waiting -= 1

    def flush_all(self):
        while self.by_length:
            self.flush(next(iter(self.by_length)))


def _finished(pending: collections.deque) -> Iterator[tuple[Hashable, torch.Tensor]]:
    while pending and pending[0].done():
        clip = pending.popleft()
        yield clip.key, torch.cat(clip.codes, dim=-1)


def encode_batched(model, clips: Iterable[tuple[Hashable, Iterable]], batch_size: int | None = None,
                   device=None) -> Iterator[tuple[Hashable, torch.Tensor]]:
    """(key, codes) for each (key, pieces) of `clips`, in input order: codes (K, T) long on the CPU,
    equal to encode_pieces(model, pieces). `pieces` are one clip's pieces in order, (C, n) or (n,)
    float at the model's rate and channels (AudioPieces.read(j)), pulled one at a time.

    batch_size: pieces per codec call at most, and pieces held at once (see module doc); None: 8 on a
    GPU, 1 on a CPU. device: move the model's codec there first (CUDA: pieces go there, codes come
    back); None: where it is. The codec runs in its own dtype, autocast off (model.codec.encode_audio).
    """
    if device is not None:
        unwrap_base(model).audio_encoder.to(device)
    batch_size = default_batch_size(model) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    buckets, pending = _Buckets(model, batch_size), collections.deque()
    for key, pieces in clips:
        clip = _Clip(key)
        pending.append(clip)
        for piece in pieces:
            buckets.add(clip, piece)
            yield from _finished(pending)
        if not clip.codes:
            raise ValueError(f"clip {key!r} has no pieces")
        clip.all_pulled = True
        yield from _finished(pending)
    buckets.flush_all()
    yield from _finished(pending)
