"""Turn a real collection (folders and/or zip batches of audio) into training data.

Writes, under the output dir: train/ and valid/ (32 kHz 16-bit WAV segments, mono or stereo as
the source), metadata.json in
the format data.metadata.read_metadata reads, and prepare_report.json (every skipped file with its reason,
dropped segments, description coverage, hours per split). See DATA_PREPARATION.md.

Rules, in the order they apply to each source file:
  1. decode (any rate, whatever soundfile/librosa read), resample to 32 kHz; mono and stereo sources
     keep their channels (training mixes or up-mixes them to the model's: audio.to_channels), more
     than two channels are mixed to mono (their speaker layout is unknown);
     an unreadable, corrupt or empty file is reported and skipped;
  2. optionally normalise the track's integrated loudness (--normalize_loudness LUFS, BS.1770);
  3. cut into --segment_duration pieces from the start; a last piece shorter than
     --min_segment_ratio x segment_duration is dropped (audiocraft's rule: padding teaches silence);
  4. drop near-silent segments: RMS below --silence_threshold_db dBFS (default -60);
  5. split by source track (all segments of a track on one side), seeded, sized by --valid_ratio.
Output names derive from the source path, sources are processed in sorted order and nothing
time-dependent is written, so the same input gives byte-identical output.

A track is never held whole: it is decoded, resampled, (normalised,) cut and written in blocks
(`track_segments`), so memory does not grow with its length; each step gives exactly the samples the
whole-track computation gave (resampling: audio.stream_audio; loudness: LoudnessMeter). Loudness needs
the whole track before the first segment, so with --normalize_loudness a track is decoded twice.
"""
import csv
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm.auto import tqdm

from musicgen_lora.audio.reader import MUSICGEN_SAMPLE_RATE, NotStreamable, stream_audio
from musicgen_lora.audio.writer import write_audio
from musicgen_lora.core.common import UserError, log, parse_json
from musicgen_lora.core.outputs import (
    atomic_write_json,
    check_shared_targets,
    clean_stale,
    read_manifest,
    temp_path,
    write_manifest,
)
from musicgen_lora.data.config import PrepareConfig

TOOL = "prepare_data.py"
SAMPLE_RATE = MUSICGEN_SAMPLE_RATE  # prepared data is written at the rate every MusicGen codec runs at
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".m4a")
REPORT_NAME = "prepare_report.json"


# --------------------------------------------------------------------------------------------
# Sources: files under --input_dir and members of --input_zip, in one sorted list
# --------------------------------------------------------------------------------------------
@dataclass
class Source:
    name: str                      # shown in the report and stored as metadata "source"
    rel: str                       # path matched against --descriptions_file entries
    path: Path | None = None       # a file on disk ...
    zip_path: Path | None = None   # ... or a member of a zip
    member: str | None = None
    sidecar: str | None = None     # the .txt beside it (a path, or a member of the same zip)
    size: int = 0


def _is_audio(name: str) -> bool:
    base = PurePosixPath(name).name
    return base.lower().endswith(AUDIO_EXTENSIONS) and not base.startswith(".")


def _inside(root: Path, path: Path) -> bool:
    """True when `path`, links followed, lies under `root` (links never lead out of an input tree)."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def find_sources(input_dirs=(), input_zips=(), exclude=(), limits: "ZipLimits | None" = None):
    """All audio sources, sorted by name; plus report entries for what was found and refused
    (unreadable zips, links out of the input folder, zip members over the limits).

    `exclude`: folders never read (our own output when it sits inside an input folder).
    """
    sources, refused = [], []
    excluded = {os.path.realpath(e) for e in exclude}
    limits = limits or ZipLimits()
    for d in input_dirs:
        d = Path(d)
        if not d.is_dir():
            raise UserError(f"{d}: --input_dir not found or not a folder")
        for folder, dirs, files in os.walk(d):  # links to folders are not descended into
            dirs[:] = sorted(x for x in dirs if not x.startswith(".")
                             and os.path.realpath(os.path.join(folder, x)) not in excluded)
            for name in sorted(files):
                path = Path(folder) / name
                rel = path.relative_to(d).as_posix()
                if not _is_audio(name):
                    continue
                if not _inside(d, path):
                    refused.append({"source": rel, "kind": "link outside input",
                                    "reason": "a link to a file outside the input folder (links are not followed "
                                              "out of an input folder)"})
                    continue
                txt = path.with_suffix(".txt")
                sidecar = str(txt) if txt.is_file() and _inside(d, txt) else None
                sources.append(Source(name=rel, rel=rel, path=path, sidecar=sidecar, size=path.stat().st_size))
    for z in input_zips:
        z = Path(z)
        if not z.is_file():
            raise UserError(f"{z}: --input_zip not found")
        try:
            with zipfile.ZipFile(z) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as e:
            refused.append({"source": z.name, "kind": "unreadable zip", "reason": f"unreadable zip ({e})"})
            continue
        names = {i.filename for i in infos}
        last = {i.filename: n for n, i in enumerate(infos)}
        for n, info in enumerate(infos):
            m = info.filename
            if info.is_dir() or m.startswith("__MACOSX/") or not _is_audio(m):
                continue
            name = f"{z.name}:{m}"
            if last[m] != n:  # zipfile reads a name's last entry, as unzip keeps the last one written
                copies = sum(i.filename == m for i in infos)
                refused.append({"source": name, "kind": "duplicate name",
                                "reason": f"the zip holds {copies} entries named {m} (an update appended to it?); the "
                                          f"later entry of that name is used"})
                continue
            too_big = limits.check(info)
            if too_big:
                refused.append({"source": name, "kind": "too large", "reason": too_big})
                continue
            txt = str(PurePosixPath(m).with_suffix(".txt"))
            sources.append(Source(name=name, rel=m, zip_path=z, member=m,
                                  sidecar=txt if txt in names else None, size=info.file_size))
    return sorted(_distinct_names(sources), key=lambda s: s.name), refused


def _distinct_names(sources: list[Source]) -> list[Source]:
    """Names are relative to their input, so two inputs can hold one name (song.wav under two
    --input_dir folders, batch_1.zip in two places): those are named by their full path instead,
    since outputs, reports and splits go by name. Others keep their short name."""
    count = {}
    for src in sources:
        count[src.name] = count.get(src.name, 0) + 1
    return [src if count[src.name] == 1 else
            replace(src, name=str(src.path) if src.path is not None else f"{src.zip_path}:{src.member}")
            for src in sources]


@dataclass
class ZipLimits:
    """Refuse a zip member before unpacking it when it is bigger than `max_mb` unpacked, or unpacks
    to more than `max_ratio` times its packed size (zip bombs: 2 GiB of zeros pack into 2 MB).
    Real audio barely compresses (WAV ~1.1-1.5x, FLAC/MP3 ~1.0x); only members over RATIO_FLOOR_MB
    are held to the ratio, so small files of silence still pass. Python's zipfile never returns
    more than the size a member declares, so checking the declared size bounds memory and disk."""

    max_mb: float = 1024.0
    max_ratio: float = 50.0
    RATIO_FLOOR_MB = 16.0

    def check(self, info: zipfile.ZipInfo) -> str | None:
        size_mb = info.file_size / 2**20
        if size_mb > self.max_mb:
            return (f"unpacks to {size_mb:.0f} MB, over --max_member_mb {self.max_mb:g}; raise it if the file is "
                    f"real audio")
        ratio = info.file_size / max(info.compress_size, 1)
        if size_mb > self.RATIO_FLOOR_MB and ratio > self.max_ratio:
            return (f"unpacks to {size_mb:.0f} MB from {info.compress_size / 2**20:.1f} MB ({ratio:.0f}x, over "
                    f"--max_compression_ratio {self.max_ratio:g}): not audio-like data (a zip bomb?); raise the flag "
                    f"if the file is real")
        return None


class ZipReader:
    """Keeps one zip open at a time; members are read one by one (never all extracted at once)."""

    def __init__(self):
        self.path, self.zf = None, None

    def open(self, path: Path) -> zipfile.ZipFile:
        if self.path != path:
            self.close()
            self.zf, self.path = zipfile.ZipFile(path), path
        return self.zf

    def read(self, path: Path, member: str, limit: int | None = None) -> bytes:
        """A member's bytes (at most `limit` of them)."""
        with self.open(path).open(member) as f:
            return f.read(-1 if limit is None else limit)

    def extract_to(self, path: Path, member: str, dest) -> None:
        """Stream a member into an open file, in blocks (memory stays flat whatever its size)."""
        with self.open(path).open(member) as f:
            shutil.copyfileobj(f, dest, 1 << 20)

    def close(self):
        if self.zf is not None:
            self.zf.close()
        self.path, self.zf = None, None


class Unusable(UserError):
    """A source that cannot be used, with the reason its report entry gives (no path) and its kind."""

    def __init__(self, reason: str, kind: str = "unreadable"):
        super().__init__(reason)
        self.kind = kind


@contextmanager
def source_file(src: Source, zips: ZipReader):
    """A path decoders can open: the file itself, or a zip member streamed into a temp file (removed after)."""
    if src.size == 0:
        raise Unusable("empty file (0 bytes)")
    if src.path is not None:
        yield src.path
        return
    fd, tmp = tempfile.mkstemp(suffix=PurePosixPath(src.member).suffix)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                zips.extract_to(src.zip_path, src.member, f)
        except (zipfile.BadZipFile, RuntimeError, EOFError, zlib.error) as e:  # CRC error, truncated, encrypted
            raise Unusable(f"unreadable zip member ({e})") from None
        yield Path(tmp)
    finally:
        os.unlink(tmp)


def source_blocks(path: Path, sample_rate: int = SAMPLE_RATE):
    """A decoded source in blocks of float32 at sample_rate, (n,) mono or (n, 2) stereo (soundfile's layout:
    cutting and writing index samples first); Unusable with a reason (no path) when it cannot be used,
    possibly after some blocks."""
    blocks = stream_audio(path, sample_rate)
    while True:
        with warnings.catch_warnings():  # librosa's "PySoundFile failed, trying audioread" for every bad file
            warnings.simplefilter("ignore")
            try:
                block = next(blocks)
            except StopIteration:
                return
            except UserError as e:
                kind = "not streamable" if isinstance(e, NotStreamable) else "unreadable"
                raise Unusable(str(e).replace(f"{path}: ", ""), kind) from None
        yield _prepared_channels(block)


def decode_source(src: Source, zips: ZipReader, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A whole source as one array (what the blocks of source_blocks concatenate to); for small files and tests."""
    with source_file(src, zips) as path:
        blocks = list(source_blocks(path, sample_rate))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def _prepared_channels(wav: np.ndarray) -> np.ndarray:
    """(C, n) as decoded -> (n,) mono or (n, 2) stereo; more than two channels are mixed to mono."""
    if wav.shape[0] == 1 or wav.shape[0] > 2:
        return np.ascontiguousarray(wav.mean(axis=0), dtype=np.float32)
    return np.ascontiguousarray(wav.T)


def track_segments(src: Source, zips: ZipReader, s: PrepareConfig, track: dict):
    """One source decoded in blocks and cut as they arrive: (index, start, end, samples) of every segment of
    segment_bounds(track length) in order, the samples (n,) or (n, 2) float32 at SAMPLE_RATE, loudness
    normalised with --normalize_loudness, not clipped. `track` receives what is known at the end:
    "samples" (the length) and, when normalising, "loudness" (the status). Raises Unusable when the
    source cannot be decoded -- possibly after some segments were yielded: the caller discards those.
    Memory: a block and a segment, whatever the track's length."""
    seg_len = int(round(s.segment_duration * SAMPLE_RATE))
    with source_file(src, zips) as path:
        scale = None
        if s.normalize_loudness is not None:  # the whole track's loudness, before its first segment
            meter = LoudnessMeter(SAMPLE_RATE)
            for block in source_blocks(path):
                meter.feed(block)
            scale, info = meter.gains(s.normalize_loudness)
        blocks = source_blocks(path)
        if scale:
            blocks = (_scaled(b, scale) for b in blocks)
        yield from cut_blocks(blocks, seg_len, s.min_segment_ratio, track)
        if s.normalize_loudness is not None:
            track["loudness"] = info["status"]


def cut_blocks(blocks, segment_samples: int, min_ratio: float, track: dict):
    """(index, start, end, samples) of each segment of segment_bounds(total, segment_samples, min_ratio),
    cut from consecutive blocks as they arrive; track["samples"] = total at the end."""
    held, count, start, index = [], 0, 0, 0
    for block in blocks:
        held.append(block)
        count += len(block)
        while count - start >= segment_samples:
            joined = np.concatenate(held) if len(held) > 1 else held[0]
            yield index, start, start + segment_samples, joined[:segment_samples]
            index, start, held = index + 1, start + segment_samples, [joined[segment_samples:]]
    track["samples"] = count
    if count > start and count - start >= min_ratio * segment_samples - 1e-9:  # segment_bounds' rule
        yield index, start, count, np.concatenate(held)


# --------------------------------------------------------------------------------------------
# Descriptions: sidecar .txt, then --descriptions_file, then the collection's metadata.jsonl, then
# --default_description
# --------------------------------------------------------------------------------------------
class DescriptionIndex:
    """Descriptions from a JSONL ({"path", "description", ...} per line) or CSV (path,description) file.

    A source matches an entry by its relative path (or zip member name); failing that, by file name
    when exactly one entry has that file name.
    """

    def __init__(self, path=None, rows=None):
        self.by_path, self.by_name = {}, {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise UserError(f"{path}: --descriptions_file not found")
            if path.suffix.lower() == ".csv":
                rows = self._read_csv(path)
            elif path.suffix.lower() in (".jsonl", ".ndjson"):
                rows = self._read_jsonl(path)
            else:
                raise UserError(f"{path}: --descriptions_file must be .jsonl ({{\"path\", \"description\"}} per "
                                f"line) or .csv (columns path,description)")
        ambiguous = set()
        for _line, p, text in rows or ():
            key = self._norm(p)
            self.by_path[key] = text
            name = PurePosixPath(key).name
            if name in self.by_name and self.by_name[name] != text:
                ambiguous.add(name)
            self.by_name[name] = text
        for name in ambiguous:
            del self.by_name[name]

    @staticmethod
    def _norm(p: str) -> str:
        p = str(p).replace("\\", "/")
        while p.startswith("./"):
            p = p[2:]
        return p.lstrip("/")

    def __bool__(self):
        return bool(self.by_path)

    @staticmethod
    def _read_jsonl(path, text: str | None = None):
        """Rows of a JSONL file (or of its `text`, e.g. a zip member's, with `path` naming it in errors)."""
        rows = []
        text = Path(path).read_text(encoding="utf-8") if text is None else text
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = parse_json(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {n} is not valid JSON ({e}); fix or remove it") from None
            if not isinstance(obj, dict) or not obj.get("path") or not isinstance(obj.get("description"), str):
                raise UserError(f"{path}: line {n} needs \"path\" and \"description\" "
                                f"(like {{\"path\": \"audio/a.wav\", \"description\": \"...\"}})")
            if obj["description"].strip():
                rows.append((n, obj["path"], obj["description"].strip()))
        return rows

    @staticmethod
    def _read_csv(path: Path):
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
            if "path" not in cols or "description" not in cols:
                raise UserError(f"{path}: CSV needs a header row with columns path,description "
                                f"(found {', '.join(reader.fieldnames or []) or 'no header'})")
            rows = []
            for n, row in enumerate(reader, 2):
                p, text = (row.get(cols["path"]) or "").strip(), (row.get(cols["description"]) or "").strip()
                if p and text:
                    rows.append((n, p, text))
            return rows

    def lookup(self, rel: str) -> str | None:
        key = self._norm(rel)
        if key in self.by_path:
            return self.by_path[key]
        return self.by_name.get(PurePosixPath(key).name)


# The collection's own descriptions, found without a flag: the seed format ships `metadata.jsonl`
# ({"path": "audio/track1.wav", "duration", "sample_rate", "description"} per line) beside the zip
# batches, or inside them. Paths are relative to the zip's root (or the input folder's); a file name
# that is unique in the index matches too (nested folders inside a zip).
COLLECTION_INDEX = "metadata.jsonl"
MAX_INDEX_BYTES = 256 * 2**20  # a million lines of descriptions; a larger member is not an index


class FoundIndexes:
    """metadata.jsonl files found beside each --input_zip, inside it (any folder level), and at the
    top of each --input_dir; read once each, when a source first needs one."""

    def __init__(self, input_dirs=(), input_zips=()):
        self.roots = [Path(d) for d in input_dirs]
        self.cache: dict[str, DescriptionIndex] = {}

    def _load(self, key: str, read) -> DescriptionIndex:
        if key not in self.cache:
            self.cache[key] = read() or DescriptionIndex()
        return self.cache[key]

    @staticmethod
    def _from_file(path: Path):
        return DescriptionIndex(rows=DescriptionIndex._read_jsonl(path)) if path.is_file() else None

    def _inside(self, zip_path: Path, zips: ZipReader):
        zf = zips.open(zip_path)
        members = sorted((i for i in zf.infolist() if PurePosixPath(i.filename).name == COLLECTION_INDEX
                          and not i.is_dir() and i.file_size <= MAX_INDEX_BYTES), key=lambda i: i.filename.count("/"))
        if not members:
            return None
        member = members[0].filename
        raw = zips.read(zip_path, member, limit=MAX_INDEX_BYTES)
        rows = DescriptionIndex._read_jsonl(f"{zip_path}:{member}", raw.decode("utf-8", errors="replace"))
        # Its paths are relative to its own folder: member "batch/metadata.jsonl" says "audio/a.wav"
        # for "batch/audio/a.wav"; keyed by the member name, a lookup needs no prefix games.
        folder = str(PurePosixPath(member).parent)
        prefix = "" if folder == "." else folder + "/"
        return DescriptionIndex(rows=[(n, prefix + DescriptionIndex._norm(p), text) for n, p, text in rows])

    def lookup(self, src: Source, zips: ZipReader) -> str | None:
        if src.zip_path is not None:
            inside = self._load(f"in:{src.zip_path}", lambda: self._inside(src.zip_path, zips))
            folder = src.zip_path.parent
            beside = self._load(f"by:{folder}", lambda: self._from_file(folder / COLLECTION_INDEX))
            return inside.lookup(src.rel) or beside.lookup(src.rel)
        for root in self.roots:
            if _inside(root, src.path):
                index = self._load(f"top:{root}", lambda r=root: self._from_file(r / COLLECTION_INDEX))
                return index.lookup(src.rel)
        return None


# A description is a line or a paragraph; reading more than this of a sidecar is never useful (the
# text is cut to data.metadata.MAX_TEXT_TOKENS tokens anyway) and a huge file must not fill memory.
MAX_SIDECAR_BYTES = 64 * 1024


def describe(src: Source, index: DescriptionIndex, default: str | None, zips: ZipReader,
             found: "FoundIndexes | None" = None):
    """(description, where it came from) or (None, None). Order: the sidecar .txt, --descriptions_file,
    the collection's own metadata.jsonl (inside the source's zip, else beside the zip or at the input
    folder's top: FoundIndexes), --default_description."""
    if src.sidecar:
        if src.path is not None:
            with open(src.sidecar, "rb") as f:
                raw = f.read(MAX_SIDECAR_BYTES)
        else:
            raw = zips.read(src.zip_path, src.sidecar, limit=MAX_SIDECAR_BYTES)
        text = raw.decode("utf-8", errors="replace").strip()
        if text:
            return " ".join(text.split()), "sidecar"
    text = index.lookup(src.rel)
    if text:
        return text, "descriptions_file"
    text = found.lookup(src, zips) if found is not None else None
    if text:
        return text, "metadata_jsonl"
    if default and default.strip():
        return default.strip(), "default"
    return None, None


# --------------------------------------------------------------------------------------------
# Signal rules
# --------------------------------------------------------------------------------------------
def segment_bounds(num_samples: int, segment_samples: int, min_ratio: float) -> list[tuple[int, int]]:
    """[start, end) of each segment; a last piece under min_ratio x segment is dropped."""
    bounds = []
    for start in range(0, num_samples, segment_samples):
        end = min(start + segment_samples, num_samples)
        if end - start >= min_ratio * segment_samples - 1e-9:
            bounds.append((start, end))
    return bounds


def rms_dbfs(x: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


class LoudnessMeter:
    """pyloudnorm.Meter(rate).integrated_loudness of a track fed in blocks, equal to the one-shot value
    (tests/test_data_prep.py checks ==): the same K-weighting filters (lfilter carrying its state between
    blocks runs the same recurrence), the same 400 ms gating blocks summed from the same samples, the same
    gating. Holds the filtered samples of one gating block and one fed block, and one number per block.
    Also keeps the track's peak, for the peak limit."""

    def __init__(self, rate: int):
        import pyloudnorm

        meter = pyloudnorm.Meter(rate)
        self.rate, self.block_size, self.step = rate, meter.block_size, 1.0 - meter.overlap
        # pyloudnorm's K-weighting stages, in its order (its one definition of them)
        self.stages = [(f.b, f.a, f.passband_gain) for f in meter._filters.values()]
        self.states, self.held, self.held_start, self.count = None, None, 0, 0
        self.z: list[list[float]] = []  # per gating block: each channel's mean square
        self.peak = np.float32(0.0)

    def _bounds(self, j: int) -> tuple[int, int]:
        return (int(self.block_size * (j * self.step) * self.rate),
                int(self.block_size * (j * self.step + 1) * self.rate))

    def feed(self, block: np.ndarray) -> None:
        import scipy.signal

        x = block.reshape(len(block), -1)
        if x.size:
            self.peak = max(self.peak, np.max(np.abs(x)))
        x = x.astype(np.float64)
        if self.states is None:
            self.states = [[np.zeros(max(len(a), len(b)) - 1) for _ in range(x.shape[1])] for b, a, _g in self.stages]
        for ch in range(x.shape[1]):
            col = x[:, ch]
            for k, (b, a, gain) in enumerate(self.stages):
                out, self.states[k][ch] = scipy.signal.lfilter(b, a, col, zi=self.states[k][ch])
                col = gain * out
            x[:, ch] = col
        self.held = x if self.held is None else np.concatenate([self.held, x])
        self.count += len(x)
        self._sum_blocks(None)

    def _sum_blocks(self, num_blocks: int | None) -> None:
        """Sum every gating block that is complete (or, at the end, each of the num_blocks); drop what
        no later block needs."""
        while True:
            j = len(self.z)
            lo, hi = self._bounds(j)
            if (hi > self.count) if num_blocks is None else (j >= num_blocks):
                break
            part = self.held[max(0, lo - self.held_start):max(0, hi - self.held_start)]
            self.z.append([(1.0 / (self.block_size * self.rate)) * np.sum(np.square(part[:, i]))
                           for i in range(part.shape[1])])
        lo = self._bounds(len(self.z))[0]
        if self.held is not None and lo > self.held_start:
            self.held, self.held_start = self.held[lo - self.held_start:], lo

    def integrated(self) -> float:
        """LUFS; ValueError when shorter than one gating block (as pyloudnorm)."""
        if self.count < self.block_size * self.rate:
            raise ValueError("Audio must have length greater than the block size.")
        T = self.count / self.rate
        num_blocks = int(np.round((T - self.block_size) / (self.block_size * self.step)) + 1)
        self._sum_blocks(num_blocks)
        z = np.array(self.z[:num_blocks]).T
        channels, j_range = z.shape[0], range(num_blocks)
        # From here on pyloudnorm's own computation (Meter.integrated_loudness, BS.1770-4 gating), unchanged.
        G = [1.0, 1.0, 1.0, 1.41, 1.41]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            lj = [-0.691 + 10.0 * np.log10(np.sum([G[i] * z[i, j] for i in range(channels)])) for j in j_range]
        J_g = [j for j, l_j in enumerate(lj) if l_j >= -70.0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            z_avg_gated = [np.mean([z[i, j] for j in J_g]) for i in range(channels)]
        Gamma_r = -0.691 + 10.0 * np.log10(np.sum([G[i] * z_avg_gated[i] for i in range(channels)])) - 10.0
        J_g = [j for j, l_j in enumerate(lj) if (l_j > Gamma_r and l_j > -70.0)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            z_avg_gated = np.nan_to_num(np.array([np.mean([z[i, j] for j in J_g]) for i in range(channels)]))
        with np.errstate(divide="ignore"):
            return -0.691 + 10.0 * np.log10(np.sum([G[i] * z_avg_gated[i] for i in range(channels)]))

    def gains(self, target_lufs: float) -> tuple[tuple, dict]:
        """The float32 factors normalize_loudness multiplies the track by, in order (none: leave it), and
        its status."""
        try:
            loudness = self.integrated()
        except ValueError:  # shorter than one 400 ms gating block
            return (), {"status": "too short to measure"}
        if not math.isfinite(loudness):
            return (), {"status": "silent"}
        gain = np.float32(10 ** ((target_lufs - loudness) / 20))
        # max|x * g| is max|x| * g: float32 rounding is monotonic, so the peak is known before scaling
        peak = float(np.float32(self.peak) * gain)
        if peak > 0.999:
            return (gain, np.float32(0.999 / peak)), {"status": "peak-limited", "from_lufs": loudness}
        return (gain,), {"status": "normalized", "from_lufs": loudness}


def _scaled(wav: np.ndarray, factors: tuple) -> np.ndarray:
    for f in factors:
        wav = wav * f
    return wav.astype(np.float32)


def normalize_loudness(wav: np.ndarray, sample_rate: int, target_lufs: float) -> tuple[np.ndarray, dict]:
    """Scale a track to target integrated loudness (ITU-R BS.1770 via pyloudnorm). When the gain
    would push peaks past 0.999 the track is scaled down to that peak instead (no limiter), so such
    tracks end up quieter than the target; the report counts them. (A whole array; track_segments
    does the same in blocks.)"""
    meter = LoudnessMeter(sample_rate)
    meter.feed(wav)
    factors, info = meter.gains(target_lufs)
    return (_scaled(wav, factors) if factors else wav), info


def output_stem(source_name: str) -> str:
    """A readable, unique, filesystem-safe name for a source's segments."""
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", source_name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__").replace(":", "__")).strip("._")[-80:]
    return f"{stem}-{hashlib.sha1(os.fsencode(source_name)).hexdigest()[:8]}"  # the name's real bytes


def split_tracks(tracks: list[dict], valid_ratio: float, seed: int) -> set[str]:
    """Names of the tracks that go to valid: whole tracks, in a seeded order, until the valid side
    holds about valid_ratio of all segments (never more than ceil of it unless one track alone
    does). At least one track stays in train."""
    if valid_ratio <= 0 or len(tracks) < 2:
        return set()
    total = sum(len(t["segments"]) for t in tracks)
    target = math.ceil(valid_ratio * total - 1e-9)
    order = np.random.default_rng(seed).permutation(len(tracks))
    valid, count = set(), 0
    for i in order:
        n = len(tracks[i]["segments"])
        if count + n <= target and len(valid) < len(tracks) - 1:
            valid.add(tracks[i]["source"])
            count += n
        if count >= target:
            break
    if not valid:  # every track is bigger than the target: take the smallest one
        smallest = min(tracks, key=lambda t: (len(t["segments"]), t["source"]))
        valid.add(smallest["source"])
    return valid


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------
def check_collection(s: PrepareConfig):
    if not s.input_dirs and not s.input_zips:
        raise UserError("nothing to read: pass --input_dir DIR and/or --input_zip FILE.zip (or --create_example)")
    check_output(Path(s.output_dir), s.metadata_file, s.overwrite)


def output_targets(metadata_file: str) -> list[str]:
    return [metadata_file, REPORT_NAME, "train", "valid"]


def check_output(out: Path, metadata_file: str, overwrite: bool):
    """The data folder may hold anything else (eval prompts, the raw audio, the code cache); what
    this script writes there -- the metadata, the report, train/ and valid/ -- is replaced only with
    --overwrite, and only when this script wrote it (every file inside train/ and valid/ too)."""
    check_shared_targets(out, TOOL, output_targets(metadata_file), overwrite=overwrite, flag="--output_dir")


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


# What each kind of skipped file is called in the summary line, in this order.
def track_skip(name: str, kept: int, silent: int, num_samples: int, s: PrepareConfig) -> dict | None:
    """The report entry of a track that gave no segment (both routes), or None: too short for one, or
    every segment near-silent."""
    if not kept + silent:
        return {"source": name, "kind": "too short", "reason": f"too short: {num_samples / SAMPLE_RATE:.2f} s < "
                f"{s.min_segment_ratio * s.segment_duration:.2f} s (--min_segment_ratio x --segment_duration)"}
    if not kept:
        return {"source": name, "kind": "near-silent",
                "reason": f"near-silent: every segment's RMS is below {s.silence_threshold_db:g} dBFS"}
    return None


SKIP_KINDS = {"unreadable": "unreadable", "not streamable": "too long to decode whole", "too short": "too short",
              "near-silent": "near-silent",
              "no description": "without a description", "too large": "refused by the zip limits",
              "link outside input": "links out of the input folder",
              "duplicate name": "superseded by a later zip entry of the same name"}


def prepare_collection(s: PrepareConfig) -> dict:
    """Run the whole preparation; returns the report (also written to OUTPUT_DIR/prepare_report.json)."""
    check_collection(s)
    out = Path(s.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale(out, "prepare")  # a killed earlier run's staging folder
    sources, skipped = find_sources(s.input_dirs, s.input_zips, exclude=[out / "train", out / "valid"],
                                    limits=ZipLimits(s.max_member_mb, s.max_compression_ratio))
    broken_zips = [r for r in skipped if r["kind"] == "unreadable zip"]
    skipped = [r for r in skipped if r["kind"] != "unreadable zip"]
    if not sources and not skipped:
        where = ", ".join(map(str, [*s.input_dirs, *s.input_zips]))
        raise UserError(f"{where}: no audio files found (looked for {' '.join(AUDIO_EXTENSIONS)})")
    zips = ZipReader()
    staging = None
    try:
        described, origins = describe_sources(sources, s, zips)
        log.info(f"{out}: {plural(len(sources), 'audio file')} found" + (f", {len(skipped)} refused before "
                 f"reading" if skipped else "") + f"; cutting them into {s.segment_duration:g} s segments")
        staging = temp_path(out / "prepare")
        (staging / "segments").mkdir(parents=True)
        tracks, dropped, loudness = cut_tracks(sources, described, s, zips, staging / "segments", skipped)
        zips.close()
        metadata = split_into(staging, tracks, s)
        missing = [src.name for src in sources if src.name not in described]
        skipped += [{"source": name, "kind": "no description", "reason": "no description (no sidecar .txt, "
                     "no --descriptions_file entry, no --default_description)"} for name in missing]
        report = build_report(s, tracks, skipped, broken_zips, missing, origins, metadata, dropped, loudness)
        commit(out, staging, metadata, report, s.metadata_file)
    finally:
        zips.close()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return report


def describe_sources(sources: list[Source], s: PrepareConfig, zips: ZipReader):
    """{source name: description} and how many came from where; with --require_description, a
    file without one stops the run before anything is written."""
    index = DescriptionIndex(s.descriptions_file)
    found = FoundIndexes(s.input_dirs, s.input_zips)
    described, origins, missing = {}, {"sidecar": 0, "descriptions_file": 0, "metadata_jsonl": 0, "default": 0}, []
    for src in sources:
        text, origin = describe(src, index, s.default_description, zips, found)
        if text is None:
            missing.append(src.name)
        else:
            described[src.name] = text
            origins[origin] += 1
    if missing and s.require_description:
        raise UserError(f"{len(missing)} of {len(sources)} audio files have no description (first: "
                        f"{', '.join(missing[:3])}); add a .txt beside each, an entry in --descriptions_file, "
                        f"or --default_description TEXT")
    return described, origins


def tempo_and_key(wav: np.ndarray) -> dict:
    """{"bpm": 120.2, "key": "A minor"} of a segment, (n,) or (n, 2) at SAMPLE_RATE, from its mid signal;
    a value that cannot be estimated (a drum kit has no key: KEY_MIN_CORRELATION) is None."""
    from musicgen_lora.audio.tempo_key import estimate_key, estimate_tempo  # librosa: only when asked

    mid = wav if wav.ndim == 1 else wav.mean(axis=1)
    return {"bpm": estimate_tempo(mid, SAMPLE_RATE), "key": estimate_key(mid, SAMPLE_RATE)}


def cut_tracks(sources, described: dict, s: PrepareConfig, zips: ZipReader, folder: Path, skipped: list):
    """Decode, (normalise,) cut and drop near-silent pieces of every described source, writing the
    segments into `folder` as they are cut (track_segments: memory does not grow with a track's length).
    Returns (tracks, dropped counts, loudness statuses); skips go to `skipped`."""
    seg_len = int(round(s.segment_duration * SAMPLE_RATE))
    tracks, dropped, loudness = [], {"near_silent": 0, "short_tail": 0}, {}
    for src in tqdm(sources, desc="preparing", unit="file", disable=not s.progress, leave=False):
        if src.name not in described:
            continue  # reported under no_description
        stem, segments, silent, track, channels = output_stem(src.name), [], 0, {}, 1
        try:
            for i, a, b, wav in track_segments(src, zips, s, track):
                channels = 1 if wav.ndim == 1 else wav.shape[1]
                if rms_dbfs(wav) < s.silence_threshold_db:
                    silent += 1
                    continue
                fname = f"{stem}_{i:03d}.wav"
                write_audio(folder / fname, np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
                segments.append({"file": fname, "start": round(a / SAMPLE_RATE, 3),
                                 "duration": round((b - a) / SAMPLE_RATE, 3)})
                if s.tempo_key:  # of the segment itself: a track's tempo and key can change along it
                    segments[-1].update(tempo_and_key(wav))
        except Unusable as e:  # found mid-track, perhaps: what was written of it goes
            for seg in segments:
                os.unlink(folder / seg["file"])
            skipped.append({"source": src.name, "kind": e.kind, "reason": str(e)})
            continue
        if "loudness" in track:
            loudness[track["loudness"]] = loudness.get(track["loudness"], 0) + 1
        num_samples = track["samples"]
        bounds = len(segments) + silent
        dropped["short_tail"] += math.ceil(num_samples / seg_len) - bounds
        dropped["near_silent"] += silent
        nothing_kept = track_skip(src.name, len(segments), silent, num_samples, s)
        if nothing_kept:
            skipped.append(nothing_kept)
            continue
        tracks.append({"source": src.name, "description": described[src.name], "segments": segments,
                       "channels": channels})
    return tracks, dropped, loudness


def split_into(staging: Path, tracks: list[dict], s: PrepareConfig) -> dict:
    """Move the segments into staging/train and staging/valid by source track; the metadata for them."""
    valid_names = split_tracks(tracks, s.valid_ratio, s.seed)
    metadata = {"train": [], "valid": []}
    for split in metadata:
        (staging / split).mkdir()
    for t in tracks:
        split = "valid" if t["source"] in valid_names else "train"
        for seg in t["segments"]:
            os.replace(staging / "segments" / seg["file"], staging / split / seg["file"])
            metadata[split].append({"audio": f"{split}/{seg['file']}", "description": t["description"],
                                    "duration": seg["duration"], "source": t["source"], "start": seg["start"],
                                    **{k: seg[k] for k in ("bpm", "key") if k in seg}})
    for split in metadata:
        metadata[split].sort(key=lambda e: e["audio"])
    return metadata


def build_report(s: PrepareConfig, tracks, skipped, broken_zips, missing, origins, metadata, dropped,
                 loudness) -> dict:
    """prepare_report.json: files_found = files_used + files_skipped, the skips by kind and one by one."""
    counts = {kind: sum(1 for r in skipped if r["kind"] == kind) for kind in SKIP_KINDS}
    report = {
        "settings": {"input_dir": [str(d) for d in s.input_dirs], "input_zip": [str(z) for z in s.input_zips],
                     "sample_rate": SAMPLE_RATE, "segment_duration": s.segment_duration,
                     "min_segment_ratio": s.min_segment_ratio, "silence_threshold_db": s.silence_threshold_db,
                     "normalize_loudness": s.normalize_loudness, "valid_ratio": s.valid_ratio, "seed": s.seed,
                     "descriptions_file": s.descriptions_file, "default_description": s.default_description,
                     "max_member_mb": s.max_member_mb, "max_compression_ratio": s.max_compression_ratio},
        "files_found": len(tracks) + len(skipped),
        "files_used": len(tracks),
        "files_skipped": len(skipped),
        # Stereo sources stay stereo; a mono model mixes them, a stereo model up-mixes mono ones (L = R).
        "channels": {"mono": sum(1 for t in tracks if t["channels"] == 1),
                     "stereo": sum(1 for t in tracks if t["channels"] == 2)},
        "skipped_by_kind": {k: n for k, n in counts.items() if n},
        "skipped": sorted(skipped, key=lambda r: r["source"]),
        "unreadable_zips": broken_zips,
        "no_description": missing,
        "descriptions": {**origins, "missing": len(missing)},
        "segments": {"written": sum(len(v) for v in metadata.values()),
                     "dropped_near_silent": dropped["near_silent"], "dropped_short_tail": dropped["short_tail"]},
        "splits": {split: {"tracks": len({e["source"] for e in entries}), "segments": len(entries),
                           "hours": round(sum(e["duration"] for e in entries) / 3600, 4)}
                   for split, entries in metadata.items()},
    }
    if s.normalize_loudness is not None:
        report["loudness"] = loudness
    return report


def commit(out: Path, staging: Path, metadata: dict, report: dict, metadata_file: str):
    """Put the new data in place. The new names are claimed first (a kill mid-swap leaves nothing
    unrecorded), then train/ and valid/ are swapped in, and the metadata is written last: until then
    the previous metadata.json and its audio stay as they were. With nothing to write, only the
    report is, and the run stops with one line."""
    owned = set((read_manifest(out) or {}).get("paths", []))
    if not report["files_used"]:
        write_manifest(out, TOOL, owned | {REPORT_NAME})
        atomic_write_json(out / REPORT_NAME, report)
        raise UserError(f"no segments written: all {report['files_found']} files were skipped; reasons in "
                        f"{out / REPORT_NAME}")
    written = [metadata_file, REPORT_NAME] + [e["audio"] for entries in metadata.values() for e in entries]
    write_manifest(out, TOOL, owned | set(written))
    for split in ("train", "valid"):
        if (out / split).exists():
            os.replace(out / split, staging / f"old-{split}")
        os.replace(staging / split, out / split)
    atomic_write_json(out / metadata_file, metadata)
    atomic_write_json(out / REPORT_NAME, report)
    write_manifest(out, TOOL, written)


def summary_lines(report: dict, out: Path, metadata_file: str | None) -> list[str]:
    """The run's summary, the same for both routes (--codes_only: store_preparation.store_report, over the
    whole store; metadata_file None)."""
    d, sp, seg = report["descriptions"], report["splits"], report["segments"]
    found, kinds = report["files_found"], report["skipped_by_kind"]
    described = found - d["missing"]
    why = ", ".join(f"{kinds[k]} {SKIP_KINDS[k]}" for k in SKIP_KINDS if kinds.get(k))
    lines = [
        f"files: {found} found = {report['files_used']} used + {report['files_skipped']} skipped" +
        (f" ({why})" if why else ""),
        f"segments: {seg['written']} written"
        + (f" (from {plural(report['channels']['stereo'], 'stereo source')}, kept stereo)"
           if report["channels"].get("stereo") else "") + f"; dropped {seg['dropped_near_silent']} near-silent and "
        f"{seg['dropped_short_tail']} short {'tail' if seg['dropped_short_tail'] == 1 else 'tails'}",
        f"train: {plural(sp['train']['segments'], 'segment')} from {plural(sp['train']['tracks'], 'track')}, "
        f"{sp['train']['hours']:.3f} h; valid: {plural(sp['valid']['segments'], 'segment')} from "
        f"{plural(sp['valid']['tracks'], 'track')}, {sp['valid']['hours']:.3f} h",
        f"descriptions: {described}/{found} files ({100 * described / max(found, 1):.0f}%): {d.get('sidecar', 0)} "
        f"sidecar .txt, {d.get('descriptions_file', 0)} descriptions file, {d.get('metadata_jsonl', 0)} "
        f"metadata.jsonl, {d.get('default', 0)} default",
    ]
    shown = [r for r in report["skipped"] if r["kind"] != "no description"]
    for r in shown[:5]:
        lines.append(f"  skipped {r['source']}: {r['reason']}")
    if len(shown) > 5:
        lines.append(f"  ... {len(shown) - 5} more in {out / REPORT_NAME}")
    for z in report.get("unreadable_zips", []):
        lines.append(f"warning: {z['source']}: {z['reason']}; none of its files were read")
    if d["missing"]:
        lines.append(f"warning: {plural(d['missing'], 'file')} without a description left out (first: "
                     f"{report['no_description'][0]}); add sidecar .txt files, --descriptions_file or "
                     f"--default_description, or --require_description to stop on this")
    if "loudness" in report:
        lines.append("loudness: " + ", ".join(f"{n} {status}" for status, n in sorted(report["loudness"].items())))
    lines.append(f"wrote {out / metadata_file} and {out / REPORT_NAME}" if metadata_file else
                 f"wrote {out / REPORT_NAME} (every unit of the store)")
    return lines
