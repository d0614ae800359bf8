"""Units of work for preparing a large collection straight to codes (prepare_data.py --codes_only).

A unit is what one process encodes and commits in one step (code_store.UnitWriter): one
--input_zip, or one shard of SHARD_SIZE files of an --input_dir in sorted order. Units make the
preparation
  - resumable: a unit is committed whole or not at all, so a killed run re-run skips every committed
    unit and redoes only the one it was in;
  - incremental: a unit records what it was made from (`identity`); a second run that adds a zip
    encodes only that zip, and a zip that changed is redone;
  - distributable: process `rank` of `world` takes units rank, rank + world, ... (`assigned`); each
    unit has one writer and its own files, so no process ever writes a file another one writes.

A unit's identity has three parts (`content_of`, `location_of`):
  - its content: a zip's central directory -- every member's name, CRC-32 and size -- hashed (not the
    file's path or mtime, and reading it costs a directory listing, not a pass over gigabytes); a
    folder shard's files' relative paths, sizes and mtimes (adding a file to a folder shifts the
    later shards: they are redone);
  - the preparation rules it was cut and described by (store_preparation.preparation_rules);
  - where it came from: the zip's absolute path, or the folder's and the shard's number.
A re-run finds a committed unit by content and rules, wherever it sits now: copying the batches to
another disk re-encodes nothing. The unit id is the source's name plus a hash of all three
(`unit_id`), so two collections' batch_1.zip never share a folder, and a unit is never replaced by
another one that happens to have its name.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from musicgen_lora.data.preparation import Source, ZipLimits, find_sources

SHARD_SIZE = 1000  # files per folder unit: the size of one of the seed's zip batches
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Unit:
    id: str                                     # its folder name in the store: units/<id>/
    sources: tuple[Source, ...]                 # the audio files it encodes, sorted by name
    identity: dict = field(hash=False)          # what it was made from (see the module doc)
    refused: tuple[dict, ...] = ()              # files found and refused before reading (report entries)
    name: str = "unit"                          # the zip's stem or the folder shard's name, for messages

    @property
    def num_files(self) -> int:
        return len(self.sources)


# Fields of an identity that say where a unit came from, not what it holds (location_of).
LOCATION_FIELDS = ("name", "path", "folder", "shard")


def safe_name(name: str) -> str:
    """A file-system-safe form of a zip's or folder's name: archive_batch_0001.zip -> archive_batch_0001."""
    return _UNSAFE.sub("_", name).strip("._")[:96] or "unit"


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode("utf-8", "surrogateescape")).hexdigest()


def content_of(identity: dict) -> dict:
    """What a unit holds: its sources' content and the rules it was prepared by (no location). The
    collection's metadata.jsonl files count by content: rules record them as {path: sha256}."""
    out = {k: v for k, v in (identity or {}).items() if k not in LOCATION_FIELDS}
    rules = out.get("rules")
    if isinstance(rules, dict) and isinstance(rules.get("metadata_jsonl"), dict):
        out["rules"] = {**rules, "metadata_jsonl": sorted(map(str, rules["metadata_jsonl"].values()))}
    return out


def location_of(identity: dict) -> tuple | None:
    """Where a unit's sources sit (a zip's path; a folder's path and shard number; the zip's name for
    a unit written before units recorded paths)."""
    identity = identity or {}
    if identity.get("kind") == "zip" and identity.get("path"):
        return ("zip", identity["path"])
    if identity.get("kind") == "zip" and identity.get("name"):  # written before units recorded paths
        return ("zip name", identity["name"])
    if identity.get("kind") == "folder" and identity.get("folder") and identity.get("shard") is not None:
        return ("folder", identity["folder"], identity["shard"])
    return None


def unit_id(name: str, identity: dict) -> str:
    """The source's name and 10 hex digits of its whole identity: archive_batch_0001-3f9c0a1b2d. Unique
    per source location, content and rules, readable in a listing."""
    return f"{safe_name(name)}-{_digest(identity)[:10]}"


def with_rules(unit: Unit, rules: dict) -> Unit:
    """The unit with its preparation rules in its identity, and the id that identity gives."""
    identity = {**unit.identity, "rules": rules}
    return replace(unit, id=unit_id(unit.name, identity), identity=identity)


def zip_identity(path: Path) -> dict:
    """The zip's content identity from its central directory (names, CRC-32s, sizes), and its path."""
    h = hashlib.sha256()
    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            h.update(f"{info.filename}\0{info.CRC:08x}\0{info.file_size}\n".encode("utf-8", "surrogateescape"))
    return {"kind": "zip", "name": path.name, "path": os.path.abspath(path), "members": h.hexdigest()}


def shard_identity(folder: Path, shard: int, sources) -> dict:
    h = hashlib.sha256()
    for src in sources:
        st = os.stat(src.path)
        h.update(f"{src.rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return {"kind": "folder", "folder": os.path.abspath(folder), "shard": shard, "files": h.hexdigest()}


def plan_units(input_dirs=(), input_zips=(), shard_size: int = SHARD_SIZE, exclude=(),
               limits: ZipLimits | None = None) -> tuple[list[Unit], list[dict]]:
    """Every unit of the collection, in a fixed order (zips as given, then folder shards), and the
    report entries of zips that cannot be read at all. Reads zip directories and folder listings
    only: nothing is decoded here."""
    units, broken = [], []
    for z in input_zips:
        z = Path(z)
        sources, refused = find_sources(input_zips=[z], limits=limits)
        if any(r["kind"] == "unreadable zip" for r in refused):
            broken += refused
            continue
        identity = zip_identity(z)
        units.append(Unit(unit_id(z.stem, identity), tuple(sources), identity, tuple(refused), z.stem))
    for d in input_dirs:
        d = Path(d)
        sources, refused = find_sources(input_dirs=[d], exclude=exclude, limits=limits)
        for n, start in enumerate(range(0, max(len(sources), 1), shard_size)):
            chunk = tuple(sources[start:start + shard_size])
            if not chunk and not refused:
                continue
            identity, name = shard_identity(d, n, chunk), f"{d.resolve().name}-shard-{n:04d}"
            units.append(Unit(unit_id(name, identity), chunk, identity, tuple(refused) if n == 0 else (), name))
    return units, broken


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process under `accelerate launch` or torchrun (their RANK and
    WORLD_SIZE variables); (0, 1) when run on its own. No process group is needed: units are split
    by number, and each process writes only its own units."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        return 0, 1
    return (rank, world) if 0 <= rank < world else (0, 1)


def assigned(units: list[Unit], rank: int, world: int) -> list[Unit]:
    """This process's units: every world-th one from its rank (units are similar in size: zips of
    ~1,000 clips, shards of SHARD_SIZE files)."""
    return units[rank::world]


def in_valid(source_name: str, seed: int, valid_ratio: float) -> bool:
    """Whether a track goes to validation: a seeded hash of its name below valid_ratio. Units are
    prepared apart (other processes, other runs), so the split cannot be drawn over all tracks at
    once as the WAV route's split_tracks does; a hash gives every process the same answer, keeps
    all segments of a track on one side, and leaves committed units' splits unchanged when a zip
    is added. The share is valid_ratio on average, not exactly."""
    digest = hashlib.sha256(json.dumps([seed, source_name]).encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < valid_ratio


@dataclass
class StorePlan:
    """What a run does with each unit of the collection, given the units a store already holds."""

    done: list = field(default_factory=list)           # (unit, committed id with the same content and rules)
    new: list = field(default_factory=list)            # units never encoded
    changed_source: list = field(default_factory=list)  # (unit, committed id of the same location, other content)
    changed_rules: list = field(default_factory=list)   # (unit, committed id, ["seed 3 -> 1", ...])

    @property
    def superseded(self) -> dict:
        """{unit id: the committed id it replaces once it is committed}."""
        return {u.id: old for u, old, *_ in self.changed_source + self.changed_rules}


def _rule_changes(old: dict, new: dict) -> list[str]:
    old, new = old or {}, new or {}
    return [f"{k} {old.get(k, 'unset')} -> {new.get(k, 'unset')}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def plan_against(units: list[Unit], committed: dict[str, dict]) -> StorePlan:
    """Match each unit (identity with rules: with_rules) to the store's committed units ({id: unit.json}):
    the same content and rules anywhere is done; the same location with other content is a changed
    source (redone: its old codes are no longer true); the same location and content under other
    rules is a changed rule (the caller refuses unless asked: re-encoding a collection takes hours)."""
    by_content, by_location = {}, {}
    for uid, info in sorted(committed.items()):
        source = info.get("source") if isinstance(info.get("source"), dict) else {}
        by_content.setdefault(_digest(content_of(source)), uid)
        if location_of(source) is not None:
            by_location.setdefault(location_of(source), (uid, source))
    plan = StorePlan()
    for unit in units:
        if _digest(content_of(unit.identity)) in by_content:
            plan.done.append((unit, by_content[_digest(content_of(unit.identity))]))
            continue
        old = by_location.get(location_of(unit.identity))
        if old is None and unit.identity.get("kind") == "zip":  # a unit of an earlier version: by zip name
            old = by_location.get(("zip name", unit.identity.get("name")))
        if old is None:
            plan.new.append(unit)
            continue
        old_id, source = old
        same_files = {k: v for k, v in content_of(source).items() if k != "rules"} == \
                     {k: v for k, v in content_of(unit.identity).items() if k != "rules"}
        if same_files:
            plan.changed_rules.append((unit, old_id, _rule_changes(source.get("rules"), unit.identity.get("rules"))))
        else:
            plan.changed_source.append((unit, old_id))
    return plan
