"""What makes EnCodec codes stale, computed in one place for the code store (code_store.StoreKey):
the content of an audio file (file_sha256, memoised per stat by FileHashMemo), the codec's identity
(codec_identity: its config and every weight of `audio_encoder`) and the settings that decide the
samples it sees (codec_settings: sample rate, channel layout -- mono mix, or stereo interleaved
[L0, R0, L1, ...] --, resampler, piece-wise encoding, dtype).

(The per-clip cache that lived here, DATA_DIR/.codes_cache/, is gone: train_lora.py keeps every
route's codes in the one store, code_store.py. An old .codes_cache/ folder is never read nor
deleted by this version; delete it yourself.)
"""
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from musicgen_lora.audio.reader import RESAMPLER, piece_samples
from musicgen_lora.core.common import log
from musicgen_lora.core.outputs import atomic_write_text
from musicgen_lora.model.checkpoint import model_info, unwrap_base

CACHE_FORMAT = 1
# How a clip's codes are computed, beyond the samples: piece by piece (audio.piece_samples), every
# codec LSTM over at least two rows (model.codec._lstms_on_two_rows). The "-2row" marks the change that
# made batched codes equal single ones: a mono clip encoded alone before it could differ in ~2 codes
# per 100,000, so entries written before are re-encoded rather than mixed with new ones.
ENCODE_RULE = "pieces-2row"
OLD_CACHE_NAME = ".codes_cache"  # what versions before the store wrote (never read, never deleted)
HASH_MEMO_NAME = "file_hashes.json"
# git's "racy clean" rule: a file written within this long before it was hashed could be written
# again inside the same timestamp tick without its stat changing, so such an entry is not trusted
# and the file is hashed again on the next run (by then it is old enough).
RACY_MARGIN_NS = 2_000_000_000


def file_sha256(path, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class FileHashMemo:
    """sha256 of audio files, reused while a file's stat (size, mtime, ctime, inode) is unchanged.

    Hashing is what makes a cache key content-based, but re-reading every clip on every run costs a
    full pass over the dataset's bytes. Any write, rename-over or `touch` changes mtime or ctime (the
    latter cannot be set from user space), so an unchanged stat means unchanged bytes; a file whose
    mtime is too close to its hashing time is re-hashed (RACY_MARGIN_NS). A missing or unreadable
    memo file only costs the hashing: it is rebuilt.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.entries, self.dirty, self.hashed = {}, False, 0
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("format") == CACHE_FORMAT:
                self.entries = data.get("files", {})
        except (OSError, ValueError):
            pass

    def sha256(self, audio_path) -> str:
        path = str(Path(audio_path).resolve())
        st = os.stat(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self.entries.get(path)
        if (isinstance(entry, dict) and entry.get("stat") == stamp
                and st.st_mtime_ns + RACY_MARGIN_NS < entry.get("hashed_at_ns", 0)):
            return entry["sha256"]
        hashed_at = time.time_ns()
        digest = file_sha256(path)
        self.entries[path] = {"stat": stamp, "sha256": digest, "hashed_at_ns": hashed_at}
        self.dirty, self.hashed = True, self.hashed + 1
        return digest

    def save(self):
        """Atomic write (temp name + rename): concurrent ranks each replace it whole, never mix."""
        if not self.dirty:
            return
        try:
            atomic_write_text(self.path, json.dumps({"format": CACHE_FORMAT, "files": self.entries}))
            self.dirty = False
        except OSError as e:  # a read-only (or full) cache still serves hits; the next run only hashes again
            log.warning(f"{self.path}: could not save the file-hash memo ({e}); files are re-hashed next run")


def codec_identity(model) -> str:
    """sha256 of the codec's config and weights (computed once per run; ~0.5 s for musicgen-small's)."""
    base = unwrap_base(model)
    codec = base.audio_encoder
    h = hashlib.sha256()
    cfg = {k: v for k, v in codec.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def codec_settings(model, sample_rate: int) -> dict:
    """Besides the codec's weights (codec_identity), what decides the codes a clip gets: the samples
    the codec sees (rate, channel layout, resampler, piece-wise encoding) and the dtype it runs in.
    The code store (code_store.StoreKey) keys on these, so the rules live here once."""
    param = next(unwrap_base(model).audio_encoder.parameters())
    info = model_info(model)
    hop, channels = info["hop_length"], info["audio_channels"]
    # "mono-mean" keeps mono entries written before stereo support valid.
    layout = "mono-mean" if channels == 1 else f"{channels}ch-interleaved"
    return {"sample_rate": int(sample_rate), "channels": layout, "resampler": RESAMPLER, "encode": ENCODE_RULE,
            "piece_samples": piece_samples(sample_rate, hop), "dtype": str(param.dtype), "hop_length": hop}
