"""On-disk cache of EnCodec codes, so each clip is encoded at most once across epochs and runs.

A cache entry holds the codes of the WHOLE clip (never a crop) as a safetensors file: random training
crops are taken in code frames from it (audio.codes.crop_codes), so one entry serves every epoch.

The key is sha256 over
  - the audio file's bytes (content, not its path or mtime: a re-exported file re-encodes),
  - the codec's identity: its config and every weight of `audio_encoder` (another checkpoint, or a
    fine-tuned codec, re-encodes), and the dtype it runs in,
  - the settings that decide the samples it sees: sample rate, channel layout (mono mix, or
    stereo: L/R kept, mono up-mixed), resampler, piece-wise encoding, cache format.
Change any of them and the key changes, so a stale entry is never read. Entries are written to a
temp name and renamed, so a killed run leaves no half-written file.

A stereo entry holds the interleaved (8, T) codes [L0, R0, L1, ...]; the layout is in the key, so a
mono entry is never served to a stereo model or the reverse.

Layout: CACHE_DIR/<key[:2]>/<key>.safetensors with tensor "codes" (K, T) int32 and metadata
num_samples, sample_rate, source; CACHE_DIR/file_hashes.json memoises each audio file's sha256
against its stat (see FileHashMemo), so a run over 100k cached clips reads no audio at all.

MusicGen-Melody runs also cache the chroma of each clip's conditioning audio (the clip itself, or its
metadata `condition_audio`) beside the codes, by the same rules (ChromaCache): the key is the audio
file's sha256 + the chroma's settings (chroma.py's parameters, sample rate, mono mix, resampler,
pieces); no codec is involved. CACHE_DIR/chroma/<key[:2]>/<key>.safetensors holds the WHOLE clip's
chroma as "classes" (frames,) uint8 -- one pitch class per frame, what a one-hot chroma is -- and a
training window crops its frames (chroma.window_frames), as the uncached path computes them.
"""
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from musicgen_lora.audio import chroma as chroma
from musicgen_lora.audio.reader import RESAMPLER, AudioPieces, piece_samples
from musicgen_lora.core.common import UserError, log, resolve_device
from musicgen_lora.core.outputs import atomic_file, atomic_write_text, clean_stale
from musicgen_lora.data.metadata import read_metadata
from musicgen_lora.model.checkpoint import load_model_and_processor, model_info, unwrap_base
from musicgen_lora.model.codec import encode_pieces
from musicgen_lora.model.encoding import encode_batched

CACHE_FORMAT = 1
# How a clip's codes are computed, beyond the samples: piece by piece (audio.piece_samples), every
# codec LSTM over at least two rows (model.codec._lstms_on_two_rows). The "-2row" marks the change that
# made batched codes equal single ones: a mono clip encoded alone before it could differ in ~2 codes
# per 100,000, so entries written before are re-encoded rather than mixed with new ones.
ENCODE_RULE = "pieces-2row"
DEFAULT_CACHE_NAME = ".codes_cache"
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
    The code cache keys on these (with its CACHE_FORMAT) and the code store (code_store.StoreKey)
    on the same values, so the rules live here once."""
    param = next(unwrap_base(model).audio_encoder.parameters())
    info = model_info(model)
    hop, channels = info["hop_length"], info["audio_channels"]
    # "mono-mean" keeps mono entries written before stereo support valid.
    layout = "mono-mean" if channels == 1 else f"{channels}ch-interleaved"
    return {"sample_rate": int(sample_rate), "channels": layout, "resampler": RESAMPLER, "encode": ENCODE_RULE,
            "piece_samples": piece_samples(sample_rate, hop), "dtype": str(param.dtype), "hop_length": hop}


def save_codes(path, codes: torch.Tensor, num_samples: int, sample_rate: int, source):
    """Write one entry (the format load_codes reads), atomically."""
    from safetensors.torch import save_file

    with atomic_file(Path(path)) as tmp:
        save_file({"codes": codes.to(torch.int32).contiguous()}, str(tmp),
                  metadata={"num_samples": str(num_samples), "sample_rate": str(sample_rate),
                            "source": os.fsencode(str(source)).decode("utf-8", "backslashreplace")})


def load_codes(path) -> tuple[torch.Tensor, int]:
    """Read one entry: (codes (K, T) long, num_samples of the clip it encodes)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            codes = f.get_tensor("codes").long()
        return codes, int(meta["num_samples"])
    except Exception as e:  # truncated by hand, disk error...
        raise UserError(f"{path}: unreadable code cache entry ({type(e).__name__}: {e}); delete it (it is "
                        f"re-encoded on the next run) or train with --no_cache") from None


class CodeCache:
    """Codes of whole clips, keyed by audio content + codec identity + settings (see module doc)."""

    def __init__(self, cache_dir, model, sample_rate: int):
        self.dir = Path(cache_dir)
        self.model = model
        self.channels = model_info(model)["audio_channels"]
        self.settings = {"format": CACHE_FORMAT, **codec_settings(model, sample_rate)}
        self.codec_id = codec_identity(model)
        self.stats = {"hits": 0, "misses": 0}
        self.hashes = FileHashMemo(self.dir / HASH_MEMO_NAME)
        # What killed encoders left behind (entries are written under temp names, then renamed).
        for folder in [self.dir, *(p for p in (self.dir.iterdir() if self.dir.is_dir() else ()) if p.is_dir())]:
            clean_stale(folder)

    def key(self, audio_path) -> str:
        payload = {"audio": self.hashes.sha256(audio_path), "codec": self.codec_id, "settings": self.settings}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def entry_path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def pieces(self, audio_path) -> AudioPieces:
        """The clip as the codec reads it: pieces at the cache's rate, piece length and channels."""
        return AudioPieces(audio_path, self.settings["sample_rate"], self.settings["piece_samples"], self.channels)

    def encode(self, audio_path) -> tuple[torch.Tensor, int]:
        """Encode a whole clip piece by piece, exactly as the uncached training path does (one
        piece in memory at a time, however long the clip)."""
        audio = self.pieces(audio_path)
        return encode_pieces(self.model, _read_pieces(audio)).cpu(), audio.num_samples

    def get_or_encode(self, audio_path) -> Path:
        """Path of the clip's entry, encoding and storing it first on a miss."""
        path = self.entry_path(self.key(audio_path))
        if path.is_file():
            self.stats["hits"] += 1
            return path
        codes, num_samples = self.encode(audio_path)
        self._write(path, codes, num_samples, audio_path)
        self.stats["misses"] += 1
        return path

    def _write(self, path: Path, codes: torch.Tensor, num_samples: int, source):
        save_codes(path, codes, num_samples, self.settings["sample_rate"], source)

    def fill(self, clips, desc="encoding", progress=True, batch_size: int | None = None) -> list[str]:
        """Entry paths for these clips (in order), encoding the missing ones with a files/s bar,
        `batch_size` pieces per codec call (encoding.encode_batched: the codes `encode` gives, so
        the entries are the same whether a cache is filled batched or one clip at a time; None: 8 on
        a GPU, 1 on a CPU)."""
        sources = [getattr(clip, "audio_path", clip) for clip in clips]
        paths = [None] * len(sources)
        start = time.time()
        hits0, misses0, hashed0 = self.stats["hits"], self.stats["misses"], self.hashes.hashed
        bar = tqdm(total=len(sources), desc=desc, unit="file", disable=not progress, leave=False)

        def misses():
            """Hits are recorded as they are met; each missing entry goes to the encoder once (a
            second copy of the same audio is a hit, as when it was met after the first was written)."""
            queued = set()
            for i, source in enumerate(sources):
                path = self.entry_path(self.key(source))
                paths[i] = str(path)
                if path.is_file() or path in queued:
                    self.stats["hits"] += 1
                    bar.update()
                    continue
                queued.add(path)
                audio = self.pieces(source)
                yield (path, source, audio.num_samples), _read_pieces(audio)

        try:
            for (path, source, num_samples), codes in encode_batched(self.model, misses(), batch_size):
                self._write(path, codes, num_samples, source)
                self.stats["misses"] += 1
                bar.update()
        finally:  # keep the hashes done so far, even when a clip fails to decode
            bar.close()
            self.hashes.save()
        elapsed = time.time() - start
        misses = self.stats["misses"] - misses0
        hits = self.stats["hits"] - hits0
        self.last_fill = {"files": len(paths), "encoded": misses, "cached": hits,
                          "hashed": self.hashes.hashed - hashed0, "seconds": elapsed,
                          "files_per_s": len(paths) / elapsed if elapsed > 0 else float("inf")}
        return paths


def _read_pieces(audio: AudioPieces):
    """A clip's pieces in order, read one at a time as the encoder asks for them."""
    return (audio.read(j) for j in range(audio.num_pieces))


class ChromaCache:
    """Whole-clip chroma of conditioning audio for MusicGen-Melody (see module doc), sharing the code
    cache's folder and file-hash memo."""

    def __init__(self, cache_dir, sample_rate: int, hop_length: int, hashes: FileHashMemo | None = None):
        self.dir = Path(cache_dir) / "chroma"
        self.settings = {"format": CACHE_FORMAT, "kind": "chroma", "sample_rate": int(sample_rate),
                         "mix": "mono-mean", "resampler": RESAMPLER,
                         "piece_samples": piece_samples(sample_rate, hop_length), **chroma.SETTINGS}
        self.hashes = hashes or FileHashMemo(Path(cache_dir) / HASH_MEMO_NAME)
        self.stats = {"hits": 0, "misses": 0}
        for folder in [self.dir, *(p for p in (self.dir.iterdir() if self.dir.is_dir() else ()) if p.is_dir())]:
            clean_stale(folder)

    def entry_path(self, audio_path) -> Path:
        payload = {"audio": self.hashes.sha256(audio_path), "settings": self.settings}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return self.dir / key[:2] / f"{key}.safetensors"

    def get_or_compute(self, audio_path) -> Path:
        from safetensors.torch import save_file

        path = self.entry_path(audio_path)
        if path.is_file():
            self.stats["hits"] += 1
            return path
        sr = self.settings["sample_rate"]
        classes = chroma.to_classes(chroma.file_chroma(audio_path, sr, self.settings["piece_samples"]))
        with atomic_file(path) as tmp:
            save_file({"classes": classes.contiguous()}, str(tmp), metadata={"sample_rate": str(sr),
                                "source": os.fsencode(str(audio_path)).decode("utf-8", "backslashreplace")})
        self.stats["misses"] += 1
        return path

    def fill(self, audio_paths, desc="chroma", progress=True) -> list[str]:
        start, misses0 = time.time(), self.stats["misses"]
        try:
            paths = [str(self.get_or_compute(p)) for p in tqdm(audio_paths, desc=desc, unit="file",
                                                                disable=not progress, leave=False)]
        finally:
            self.hashes.save()
        self.last_fill = {"files": len(paths), "computed": self.stats["misses"] - misses0,
                          "cached": len(paths) - (self.stats["misses"] - misses0), "seconds": time.time() - start}
        return paths


def load_chroma(path) -> torch.Tensor:
    """One chroma entry -> (frames, 12) one-hot float32 of the whole clip."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return chroma.from_classes(f.get_tensor("classes"))
    except Exception as e:
        raise UserError(f"{path}: unreadable chroma cache entry ({type(e).__name__}: {e}); delete it (it is "
                        f"recomputed on the next run) or train with --no_cache") from None


def default_cache_dir(data_dir) -> Path:
    return Path(data_dir) / DEFAULT_CACHE_NAME


def open_training_cache(model, sample_rate: int, splits: dict, cache_dir: Path | None, device=None,
                        progress=True) -> dict:
    """For the trainer: entry paths per split ({split: [path, ...]}), or {split: None} without a
    cache (cache_dir None: training encodes at every step).

    The codec runs on `device` (the GPU when there is one) and in fp32: the codes must not depend on
    the trainer's autocast.
    """
    if cache_dir is None:
        return {name: None for name in splits}
    cache = CodeCache(cache_dir, model, sample_rate)
    if device is not None:
        unwrap_base(model).audio_encoder.to(device)
    out = {}
    for name, clips in splits.items():
        out[name] = cache.fill(clips, desc=f"codes ({name})", progress=progress)
        f = cache.last_fill
        log.info(f"code cache {cache_dir}: {name} {f['files']} clips, {f['cached']} cached, {f['encoded']} encoded, "
                 f"{f['hashed']} hashed ({f['files_per_s']:.1f} files/s)")
    return out


def open_chroma_cache(cache_dir: Path | None, info: dict, splits: dict, progress=True) -> dict:
    """For the trainer on MusicGen-Melody: chroma entry paths per split, of each clip's conditioning
    audio (Clip.melody_path), or {split: None} without a cache (the dataset computes each window's)."""
    if cache_dir is None:
        return {name: None for name in splits}
    cache = ChromaCache(cache_dir, info["sample_rate"], info["hop_length"])
    out = {}
    for name, clips in splits.items():
        out[name] = cache.fill([c.melody_path for c in clips], desc=f"chroma ({name})", progress=progress)
        f = cache.last_fill
        log.info(f"chroma cache {cache.dir}: {name} {f['files']} clips, {f['cached']} cached, {f['computed']} computed")
    return out


def pretokenize(model_path: str, data_dir, metadata_file="metadata.json", cache_dir=None, device="auto",
                progress=True) -> dict:
    """Fill the cache for every clip in metadata.json ahead of training; returns fill statistics."""
    splits = read_metadata(data_dir, metadata_file)
    clips = splits["train"] + splits["valid"]
    model, _ = load_model_and_processor(model_path, device=resolve_device(device))
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(data_dir)
    info = model_info(model)
    cache = CodeCache(cache_dir, model, info["sample_rate"])
    cache.fill(clips, desc="pretokenizing", progress=progress)
    out = {**cache.last_fill, "cache_dir": str(cache_dir)}
    if info["chroma_length"] is not None:  # MusicGen-Melody: each clip's melody chroma too
        chroma = ChromaCache(cache_dir, info["sample_rate"], info["hop_length"], cache.hashes)
        chroma.fill([c.melody_path for c in clips], progress=progress)
        out["chroma"] = chroma.last_fill
    return out
