"""Turn a real collection (folders and/or zip batches of audio) into training data.

Writes, under the output dir: train/ and valid/ (32 kHz mono 16-bit WAV segments), metadata.json in
the format dataset.read_metadata reads, and prepare_report.json (every skipped file with its reason,
dropped segments, description coverage, hours per split). See DATA_PREPARATION.md.

Rules, in the order they apply to each source file:
  1. decode (any rate, mono/stereo, whatever soundfile/librosa read), mix to mono, resample to 32 kHz;
     an unreadable, corrupt or empty file is reported and skipped;
  2. optionally normalise the track's integrated loudness (--normalize_loudness LUFS, BS.1770);
  3. cut into --segment_duration pieces from the start; a last piece shorter than
     --min_segment_ratio x segment_duration is dropped (audiocraft's rule: padding teaches silence);
  4. drop near-silent segments: RMS below --silence_threshold_db dBFS (default -60);
  5. split by source track (all segments of a track on one side), seeded, sized by --valid_ratio.
Output names derive from the source path, sources are processed in sorted order and nothing
time-dependent is written, so the same input gives byte-identical output.
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
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from common import UserError, atomic_write_json
from dataset import load_audio

SAMPLE_RATE = 32000
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".m4a")
DEFAULT_SILENCE_DB = -60.0
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


def find_sources(input_dirs=(), input_zips=(), exclude: Path | None = None) -> tuple[list[Source], list[dict]]:
    """All audio sources, sorted by name; plus unreadable zips as report entries."""
    sources, broken = [], []
    exclude = exclude.resolve() if exclude else None
    for d in input_dirs:
        d = Path(d)
        if not d.is_dir():
            raise UserError(f"{d}: --input_dir not found or not a folder")
        for path in d.rglob("*"):
            if not path.is_file() or not _is_audio(path.name):
                continue
            if exclude and (exclude == path.resolve().parent or exclude in path.resolve().parents):
                continue  # never re-read our own output when it sits inside the input
            rel = path.relative_to(d).as_posix()
            if any(part.startswith(".") for part in PurePosixPath(rel).parts):
                continue
            txt = path.with_suffix(".txt")
            sources.append(Source(name=rel, rel=rel, path=path, sidecar=str(txt) if txt.is_file() else None,
                                  size=path.stat().st_size))
    for z in input_zips:
        z = Path(z)
        if not z.is_file():
            raise UserError(f"{z}: --input_zip not found")
        try:
            with zipfile.ZipFile(z) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError) as e:
            broken.append({"source": z.name, "reason": f"unreadable zip ({e})"})
            continue
        names = {i.filename for i in infos}
        for info in infos:
            m = info.filename
            if info.is_dir() or m.startswith("__MACOSX/") or not _is_audio(m):
                continue
            txt = str(PurePosixPath(m).with_suffix(".txt"))
            sources.append(Source(name=f"{z.name}:{m}", rel=m, zip_path=z, member=m,
                                  sidecar=txt if txt in names else None, size=info.file_size))
    sources.sort(key=lambda s: s.name)
    return sources, broken


class ZipReader:
    """Keeps one zip open at a time; members are read one by one (never all extracted at once)."""

    def __init__(self):
        self.path, self.zf = None, None

    def open(self, path: Path) -> zipfile.ZipFile:
        if self.path != path:
            self.close()
            self.zf, self.path = zipfile.ZipFile(path), path
        return self.zf

    def read(self, path: Path, member: str) -> bytes:
        return self.open(path).read(member)

    def close(self):
        if self.zf is not None:
            self.zf.close()
        self.path, self.zf = None, None


def decode_source(src: Source, zips: ZipReader, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 at sample_rate; UserError with a reason (no path) when it cannot be used."""
    with warnings.catch_warnings():  # librosa's "PySoundFile failed, trying audioread" for every bad file
        warnings.simplefilter("ignore")
        return _decode_source(src, zips, sample_rate)


def _decode_source(src: Source, zips: ZipReader, sample_rate: int) -> np.ndarray:
    if src.size == 0:
        raise UserError("empty file (0 bytes)")
    if src.path is not None:
        try:
            return load_audio(src.path, sample_rate)
        except UserError as e:
            raise UserError(str(e).replace(f"{src.path}: ", "")) from None
    try:
        data = zips.read(src.zip_path, src.member)
    except (zipfile.BadZipFile, OSError, RuntimeError) as e:  # CRC error, truncated or encrypted member
        raise UserError(f"unreadable zip member ({e})") from None
    # librosa's fallback decoders need a real file: one member at a time goes through a temp file.
    fd, tmp = tempfile.mkstemp(suffix=PurePosixPath(src.member).suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        del data
        return load_audio(tmp, sample_rate)
    except UserError as e:
        raise UserError(str(e).replace(f"{tmp}: ", "")) from None
    finally:
        os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# Descriptions: sidecar .txt, then --descriptions_file, then --default_description
# --------------------------------------------------------------------------------------------
class DescriptionIndex:
    """Descriptions from a JSONL ({"path", "description", ...} per line) or CSV (path,description) file.

    A source matches an entry by its relative path (or zip member name); failing that, by file name
    when exactly one entry has that file name.
    """

    def __init__(self, path=None):
        self.by_path, self.by_name = {}, {}
        if path is None:
            return
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: --descriptions_file not found")
        if path.suffix.lower() == ".csv":
            rows = self._read_csv(path)
        elif path.suffix.lower() in (".jsonl", ".ndjson"):
            rows = self._read_jsonl(path)
        else:
            raise UserError(f"{path}: --descriptions_file must be .jsonl ({{\"path\", \"description\"}} per line) "
                            f"or .csv (columns path,description)")
        ambiguous = set()
        for where, p, text in rows:
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

    @staticmethod
    def _read_jsonl(path: Path):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
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


def describe(src: Source, index: DescriptionIndex, default: str | None, zips: ZipReader):
    """(description, where it came from) or (None, None)."""
    if src.sidecar:
        raw = Path(src.sidecar).read_bytes() if src.path is not None else zips.read(src.zip_path, src.sidecar)
        text = raw.decode("utf-8", errors="replace").strip()
        if text:
            return " ".join(text.split()), "sidecar"
    text = index.lookup(src.rel)
    if text:
        return text, "descriptions_file"
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


def normalize_loudness(wav: np.ndarray, sample_rate: int, target_lufs: float) -> tuple[np.ndarray, dict]:
    """Scale a track to target integrated loudness (ITU-R BS.1770 via pyloudnorm). When the gain
    would push peaks past 0.999 the track is scaled down to that peak instead (no limiter), so such
    tracks end up quieter than the target; the report counts them."""
    import pyloudnorm

    try:
        loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(wav.astype(np.float64))
    except ValueError:  # shorter than one 400 ms gating block
        return wav, {"status": "too short to measure"}
    if not math.isfinite(loudness):
        return wav, {"status": "silent"}
    out = wav * np.float32(10 ** ((target_lufs - loudness) / 20))
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0.999:
        out = out * np.float32(0.999 / peak)
        return out.astype(np.float32), {"status": "peak-limited", "from_lufs": loudness}
    return out.astype(np.float32), {"status": "normalized", "from_lufs": loudness}


def output_stem(source_name: str) -> str:
    """A readable, unique, filesystem-safe name for a source's segments."""
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", source_name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.replace("/", "__").replace(":", "__")).strip("._")[-80:]
    return f"{stem}-{hashlib.sha1(source_name.encode()).hexdigest()[:8]}"


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
@dataclass
class PrepareSettings:
    output_dir: Path
    input_dirs: list = field(default_factory=list)
    input_zips: list = field(default_factory=list)
    metadata_file: str = "metadata.json"
    segment_duration: float = 15.0
    min_segment_ratio: float = 0.8
    silence_threshold_db: float = DEFAULT_SILENCE_DB
    descriptions_file: str | None = None
    default_description: str | None = None
    require_description: bool = False
    valid_ratio: float = 0.1
    seed: int = 0
    normalize_loudness: float | None = None
    overwrite: bool = False
    progress: bool = True


def check_settings(s: PrepareSettings):
    if not s.input_dirs and not s.input_zips:
        raise UserError("nothing to read: pass --input_dir DIR and/or --input_zip FILE.zip (or --create_example)")
    if s.segment_duration <= 0:
        raise UserError("--segment_duration must be positive")
    if not 0 < s.min_segment_ratio <= 1:
        raise UserError("--min_segment_ratio must be in (0, 1]")
    if not 0 <= s.valid_ratio < 1:
        raise UserError("--valid_ratio must be in [0, 1)")
    out = Path(s.output_dir)
    if (out / s.metadata_file).exists() and not s.overwrite:
        raise UserError(f"{out / s.metadata_file}: already exists; pass --overwrite to replace it (train/, valid/ "
                        f"and the metadata are replaced together) or choose another --output_dir")
    for sub in ("train", "valid"):
        if (out / sub).is_dir() and any((out / sub).iterdir()) and not s.overwrite:
            raise UserError(f"{out / sub}: already holds files; pass --overwrite or choose another --output_dir")


def prepare_collection(s: PrepareSettings) -> dict:
    """Run the whole preparation; returns the report (also written to OUTPUT_DIR/prepare_report.json)."""
    check_settings(s)
    out = Path(s.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources, skipped = find_sources(s.input_dirs, s.input_zips, exclude=out)
    if not sources:
        where = ", ".join(map(str, [*s.input_dirs, *s.input_zips]))
        raise UserError(f"{where}: no audio files found (looked for {' '.join(AUDIO_EXTENSIONS)})")
    index = DescriptionIndex(s.descriptions_file)
    zips = ZipReader()
    seg_len = int(round(s.segment_duration * SAMPLE_RATE))

    described, origins, missing = {}, {"sidecar": 0, "descriptions_file": 0, "default": 0}, []
    for src in sources:
        text, origin = describe(src, index, s.default_description, zips)
        if text is None:
            missing.append(src.name)
        else:
            described[src.name] = text
            origins[origin] += 1
    if missing and s.require_description:
        zips.close()
        raise UserError(f"{len(missing)} of {len(sources)} audio files have no description (first: "
                        f"{', '.join(missing[:3])}); add a .txt beside each, an entry in --descriptions_file, "
                        f"or --default_description TEXT")

    staging = Path(tempfile.mkdtemp(prefix=".prepare-tmp-", dir=out))
    try:
        (staging / "segments").mkdir()
        tracks, read, dropped = [], 0, {"near_silent": 0, "short_tail": 0}
        loudness = {}
        for src in tqdm(sources, desc="preparing", unit="file", disable=not s.progress, leave=False):
            if src.name not in described:
                continue  # reported under no_description
            try:
                wav = decode_source(src, zips)
            except UserError as e:
                skipped.append({"source": src.name, "reason": str(e)})
                continue
            read += 1
            if s.normalize_loudness is not None:
                wav, info = normalize_loudness(wav, SAMPLE_RATE, s.normalize_loudness)
                loudness[info["status"]] = loudness.get(info["status"], 0) + 1
            bounds = segment_bounds(len(wav), seg_len, s.min_segment_ratio)
            n_pieces = math.ceil(len(wav) / seg_len)
            dropped["short_tail"] += n_pieces - len(bounds)
            if not bounds:
                skipped.append({"source": src.name, "reason": f"too short: {len(wav) / SAMPLE_RATE:.2f} s < "
                                f"{s.min_segment_ratio * s.segment_duration:.2f} s (--min_segment_ratio x "
                                f"--segment_duration)"})
                continue
            stem, segments = output_stem(src.name), []
            for i, (a, b) in enumerate(bounds):
                seg = wav[a:b]
                if rms_dbfs(seg) < s.silence_threshold_db:
                    dropped["near_silent"] += 1
                    continue
                fname = f"{stem}_{i:03d}.wav"
                sf.write(staging / "segments" / fname, np.clip(seg, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16")
                segments.append({"file": fname, "start": round(a / SAMPLE_RATE, 3),
                                 "duration": round((b - a) / SAMPLE_RATE, 3)})
            if not segments:
                skipped.append({"source": src.name, "reason": f"near-silent: every segment's RMS is below "
                                f"{s.silence_threshold_db:g} dBFS"})
                continue
            tracks.append({"source": src.name, "description": described[src.name], "segments": segments})
        zips.close()

        valid_names = split_tracks(tracks, s.valid_ratio, s.seed)
        metadata = {"train": [], "valid": []}
        for split in metadata:
            (staging / split).mkdir()
        for t in tracks:
            split = "valid" if t["source"] in valid_names else "train"
            for seg in t["segments"]:
                os.replace(staging / "segments" / seg["file"], staging / split / seg["file"])
                metadata[split].append({"audio": f"{split}/{seg['file']}", "description": t["description"],
                                        "duration": seg["duration"], "source": t["source"], "start": seg["start"]})
        for split in metadata:
            metadata[split].sort(key=lambda e: e["audio"])

        report = {
            "settings": {"input_dir": [str(d) for d in s.input_dirs], "input_zip": [str(z) for z in s.input_zips],
                         "sample_rate": SAMPLE_RATE, "segment_duration": s.segment_duration,
                         "min_segment_ratio": s.min_segment_ratio, "silence_threshold_db": s.silence_threshold_db,
                         "normalize_loudness": s.normalize_loudness, "valid_ratio": s.valid_ratio, "seed": s.seed,
                         "descriptions_file": s.descriptions_file, "default_description": s.default_description},
            "files_found": len(sources),
            "files_read": read,
            "files_skipped": len(skipped) + len(missing),
            "skipped": sorted(skipped, key=lambda r: r["source"]),
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
        if not tracks:
            atomic_write_json(out / REPORT_NAME, report)
            raise UserError(f"no segments written: all {len(sources)} files were skipped; reasons in "
                            f"{out / REPORT_NAME}")

        # Swap the new train/ and valid/ in, then write the metadata last: until then the previous
        # metadata.json and its audio stay as they were.
        for split in ("train", "valid"):
            if (out / split).exists():
                os.replace(out / split, staging / f"old-{split}")
            os.replace(staging / split, out / split)
        atomic_write_json(out / s.metadata_file, metadata)
        atomic_write_json(out / REPORT_NAME, report)
    finally:
        zips.close()
        shutil.rmtree(staging, ignore_errors=True)
    return report


def summary_lines(report: dict, out: Path, metadata_file: str) -> list[str]:
    d, sp, seg = report["descriptions"], report["splits"], report["segments"]
    found = report["files_found"]
    have = found - d["missing"]
    lines = [
        f"files: {found} found, {report['files_read']} read, {report['files_skipped']} skipped "
        f"({len(report['skipped'])} unreadable/too short/silent, {d['missing']} without description)",
        f"segments: {seg['written']} written, {seg['dropped_near_silent']} near-silent and {seg['dropped_short_tail']} "
        f"short tails dropped",
        f"train: {sp['train']['segments']} segments from {sp['train']['tracks']} tracks, {sp['train']['hours']:.3f} h; "
        f"valid: {sp['valid']['segments']} segments from {sp['valid']['tracks']} tracks, {sp['valid']['hours']:.3f} h",
        f"descriptions: {have}/{found} files ({100 * have / max(found, 1):.0f}%): {d['sidecar']} sidecar .txt, "
        f"{d['descriptions_file']} descriptions file, {d['default']} default",
    ]
    for r in report["skipped"][:5]:
        lines.append(f"  skipped {r['source']}: {r['reason']}")
    if len(report["skipped"]) > 5:
        lines.append(f"  ... {len(report['skipped']) - 5} more")
    if d["missing"]:
        lines.append(f"warning: {d['missing']} files have no description and were left out (first: "
                     f"{report['no_description'][0]}); add sidecar .txt files, --descriptions_file or "
                     f"--default_description, or --require_description to stop on this")
    if "loudness" in report:
        lines.append(f"loudness: {report['loudness']}")
    lines.append(f"wrote {out / metadata_file} and {out / REPORT_NAME}")
    return lines
