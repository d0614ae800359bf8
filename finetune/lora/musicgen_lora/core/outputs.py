"""Writing outputs without losing anything: the one home for how every script writes files.

- Atomic writes (`atomic_file`, `atomic_dir`, `atomic_write_*`): a temp name beside the target, then
  one rename, so a kill never leaves half a file. Temp names carry the writer's pid
  (`.NAME.tmp-PID-RANDOM`), so what a dead process left behind is recognised and swept by the next
  writer (`clean_stale`); modes follow the user's umask like any plain file write.
- Ownership: each script leaves a manifest (`.musicgen_lora.json`) in the folder it writes, naming
  the script, a run id and the paths it wrote. An overwrite removes only those paths (and, for a
  training run, the evaluations and clips made from it), and refuses, naming them, when the folder
  holds anything else. `survey` reads a folder that way.
- One writer per output folder: `output_lock` takes an exclusive lock (flock on `.NAME.lock` beside
  the folder) for the life of the process; the kernel drops it when the process dies, so a killed
  run never blocks the next one.
- A full disk (or quota, or file-size limit) while writing becomes one `DiskFull` line naming the
  file, instead of a C++ stack trace from torch or safetensors.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from musicgen_lora.core.common import UserError, log, parse_json

MANIFEST = ".musicgen_lora.json"
MANIFEST_FORMAT = 1
# What each script's folder is called in messages.
KINDS = {"train_lora.py": "a training run", "evaluate.py": "an evaluation", "inference_lora.py": "generated clips",
         "inference_lora.py --merge": "a merged model", "prepare_data.py": "prepared data",
         "make_tiny_model.py": "an offline test model"}
# Folders made from a training run's adapters: an overwrite of the run removes them with it.
DERIVED_TOOLS = ("evaluate.py", "inference_lora.py")


class DiskFull(UserError):
    """A write failed because the disk (or quota, or file-size limit) is full. `base` says what
    failed; the hint says how to go on (a script that knows better, e.g. resume, replaces it)."""

    def __init__(self, base: str, hint: str = "free some space, then run the same command again"):
        super().__init__(f"{base}; {hint}")
        self.base = base


# --------------------------------------------------------------------------------------------
# Modes, temp names, leftovers
# --------------------------------------------------------------------------------------------
def current_umask() -> int:
    """The process umask, read without changing it (/proc on Linux; set-and-restore elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def apply_umask(path: Path, is_dir: bool):
    """The mode a plain open()/mkdir() would have given (mkstemp/mkdtemp make 0600/0700)."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~current_umask())


def apply_umask_tree(root: Path):
    """apply_umask over a folder we just filled: libraries write some files 0600 (safetensors does)."""
    mask = current_umask()
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def temp_path(final: Path, kind: str = "tmp") -> Path:
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|deleting)-(?P<rest>[^.]+)$")


def _leftover(name: str):
    """(final name, kind, pid or None) for a temp name this module (or an older version) makes."""
    m = _LEFTOVER.match(name)
    if not m:
        return None
    pid = re.fullmatch(r"(\d+)(?:-[0-9a-z]+)?", m["rest"])
    return m["name"], m["kind"], int(pid[1]) if pid else None


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(folder: Path, name: str | None = None) -> int:
    """Sweep temps that dead processes left in `folder` (only those of `name` when given). A kill
    between atomic_dir's two renames leaves `.X.old-PID` and no `X`: that one is put back."""
    try:
        entries = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    swept = 0
    for entry in entries:
        parsed = _leftover(entry)
        if parsed is None or (name is not None and parsed[0] != name):
            continue
        final, kind, pid = parsed
        if pid is not None and pid_alive(pid):
            continue  # a live writer's
        if pid is None and name is None:
            continue  # an older version's temp: swept only when its own target is written again
        path = Path(folder) / entry
        if kind == "old" and not (Path(folder) / final).exists():
            os.replace(path, Path(folder) / final)
            log.info(f"restored {Path(folder) / final} from an interrupted save")
        else:
            _remove(path)
            swept += 1
    return swept


def remove_path(path: Path):
    """Delete a file or folder so that a kill midway leaves a recognisable temp, never half of it."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    doomed = temp_path(path, "deleting")
    os.replace(path, doomed)
    _remove(doomed)


# --------------------------------------------------------------------------------------------
# Full disks
# --------------------------------------------------------------------------------------------
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_FULL_TEXT = re.compile(r"no space left|disk quota|file too large|file write failed|write failed", re.I)


def disk_full_reason(exc: BaseException) -> str | None:
    """'no space left on device' (or quota / size limit) when `exc` or its causes is a failed write."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                    errno.EFBIG: "file size limit reached"}[exc.errno]
        text = str(exc)
        if not isinstance(exc, UserError) and _DISK_FULL_TEXT.search(text):
            low = text.lower()  # libraries that wrap the OS error in their own (torch, safetensors)
            return ("file size limit reached" if "too large" in low else "disk quota exceeded" if "quota" in low
                    else "no space left on device")
        exc = exc.__cause__ or exc.__context__
    return None


def free_mb(path: Path) -> float | None:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize / 2**20


def disk_full_error(exc: BaseException, path: Path) -> DiskFull | None:
    reason = disk_full_reason(exc)
    if reason is None:
        return None
    free = free_mb(path)
    where = f", {free:.0f} MB free there" if free is not None else ""
    return DiskFull(f"{path}: could not be written ({reason}{where}); what was there before is unchanged")


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: Path):
    """Yield a temp path beside `path` to write to (by any library); renamed over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path.parent, path.name)
    tmp = temp_path(path)
    try:
        yield tmp
        if tmp.exists():
            apply_umask(tmp, is_dir=False)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        full = disk_full_error(e, path)
        if full is not None:
            raise full from None
        raise


@contextlib.contextmanager
def atomic_dir(final: Path, owner: str | None = None):
    """Yield a temp dir beside `final`; on success it replaces `final` in one rename.

    A crash or kill inside the block leaves the previous `final` untouched (and a temp the next
    writer sweeps). `owner`: the script that owns `final` whole (its manifest is written inside the
    temp dir by the caller); if `final` gained files that script did not write while the block ran,
    nothing is replaced and the new folder is kept beside it, named in the error.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final.parent, final.name)
    tmp = temp_path(final)
    tmp.mkdir()
    try:
        yield tmp
        apply_umask_tree(tmp)
        if owner is not None and final.exists():
            s = survey(final, owner)
            if s.foreign or s.busy or (s.manifest is not None and s.manifest.get("tool") != owner):
                kept = final.with_name(f"{final.name}.new-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(tmp, kept)
                raise UserError(f"{final}: changed while {owner} ran ({s.describe(s.foreign + s.busy)} appeared); "
                                f"nothing in it was replaced: the new results are in {kept}")
        if final.exists():
            old = temp_path(final, "old")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full_error(e, final)
        if full is not None:
            raise full from None
        raise


def atomic_write_bytes(path: Path, data: bytes):
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: Path, text: str):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


# --------------------------------------------------------------------------------------------
# Ownership: the manifest each script leaves in its output folder
# --------------------------------------------------------------------------------------------
def new_run_id() -> str:
    """Readable and unique: when it started, plus a random tail."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, or None (none, or not one of ours)."""
    try:
        data = parse_json((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("tool"), str) or not isinstance(data.get("paths"), list):
        return None
    return data


def write_manifest(folder: Path, tool: str, paths, run_id: str | None = None, **extra) -> dict:
    """Record what `tool` wrote into `folder` (relative paths; a folder path covers all below it)."""
    old = read_manifest(folder) or {}
    same = old.get("tool") == tool and (run_id is None or old.get("run_id") == run_id)
    data = {"format": MANIFEST_FORMAT, "tool": tool, "run_id": run_id or (old.get("run_id") if same else None)
            or new_run_id(), "created": (old.get("created") if same else None) or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "paths": sorted(set(map(str, paths))), **extra}
    atomic_write_json(Path(folder) / MANIFEST, data)
    return data


def kind_of(manifest: dict | None) -> str:
    return KINDS.get((manifest or {}).get("tool"), "output of another tool")


@dataclass
class Survey:
    """What a folder holds, as seen by one script: what it may remove and what it must not touch."""

    folder: Path
    manifest: dict | None = None               # the folder's own manifest, if any
    owned: list = field(default_factory=list)  # paths the script's manifest lists (and that exist)
    derived: list = field(default_factory=list)  # sub-folders other toolkit scripts made (see DERIVED_TOOLS)
    foreign: list = field(default_factory=list)  # everything else
    busy: list = field(default_factory=list)     # paths a live process is writing or holds locked

    def describe(self, paths, limit: int = 4) -> str:
        shown = ", ".join(paths[:limit])
        return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _locked(path: Path) -> bool:
    """True when another live process holds this lock file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def lock_holder(folder: Path) -> dict | None:
    """Who holds `folder`'s output_lock ({"tool", "pid", "host", "started", ...}), or None when nobody
    does (no lock file, or a dead holder's: the kernel released it)."""
    path = lock_path(folder)
    if not _locked(path):
        return None
    try:
        holder = parse_json(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    return holder if isinstance(holder, dict) else {}


def survey(folder: Path, tool: str, legacy_paths=(), allow_derived: bool = False) -> Survey:
    """Sort a folder's contents into owned / derived / foreign / busy for `tool`.

    `legacy_paths`: names the tool wrote before manifests existed; they count as owned when the
    folder has no manifest. Temps of dead processes and lock files nobody holds are ignored
    (they are swept); those of live processes are busy.
    """
    folder = Path(folder)
    s = Survey(folder, manifest=read_manifest(folder))
    if s.manifest is not None and s.manifest.get("tool") == tool:
        listed = {p.strip("/") for p in s.manifest["paths"]}
    elif s.manifest is None:
        listed = set(legacy_paths)
    else:
        listed = set()

    def walk(path: Path, rel: str):
        for entry in sorted(os.listdir(path)):
            r = f"{rel}{entry}"
            full = path / entry
            if not rel and entry == MANIFEST:
                continue
            parsed = _leftover(entry)
            if parsed is not None:
                if parsed[2] is not None and pid_alive(parsed[2]):
                    s.busy.append(r)
                continue
            if entry.startswith(".") and entry.endswith(".lock"):
                if _locked(full):
                    s.busy.append(r)
                continue
            if r in listed:
                s.owned.append(r)
                continue
            if full.is_dir() and not full.is_symlink():
                sub = read_manifest(full) if allow_derived and not rel else None
                if sub is not None and sub.get("tool") in DERIVED_TOOLS:
                    inner = survey(full, sub["tool"])
                    if inner.foreign or inner.busy:
                        s.foreign += [f"{r}/{x}" for x in inner.foreign]
                        s.busy += [f"{r}/{x}" for x in inner.busy]
                    else:
                        s.derived.append(r)
                    continue
                if any(p.startswith(r + "/") for p in listed):
                    walk(full, r + "/")
                    continue
            s.foreign.append(r)

    if folder.is_dir():
        walk(folder, "")
    return s


def remove_owned(s: Survey):
    """Delete what the survey found owned or derived, then the folders that held only those."""
    parents = set()
    for rel in s.owned + s.derived:
        remove_path(s.folder / rel)
        parents.update(Path(rel).parents)
    for parent in sorted((p for p in parents if str(p) != "."), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            (s.folder / parent).rmdir()  # only when empty
    clean_stale(s.folder)


def check_own_folder(folder: Path, tool: str, *, overwrite: bool, flag: str, overwrite_flag: str = "--overwrite",
                     what: str | None = None) -> Survey:
    """For a script that owns its output folder whole (evaluate.py, --merge, make_tiny_model.py).

    Empty or missing: fine. Holding an earlier output of the same script: refused unless
    `overwrite`, and even then refused, naming them, when anything else is in it. Anything else:
    refused, naming what is there. Call before any expensive work.
    """
    folder = Path(folder)
    check_writable(folder, flag)
    s = survey(folder, tool)
    what = what or KINDS.get(tool, "an earlier output")
    if s.busy:
        raise UserError(f"{folder}: {s.describe(s.busy)} is being written by another process; wait for it to "
                        f"finish, or choose another {flag}")
    if s.manifest is not None and s.manifest.get("tool") != tool:
        raise UserError(f"{folder}: holds {kind_of(s.manifest)} (written by {s.manifest['tool']}), which {tool} "
                        f"never replaces; choose another {flag}")
    if not (s.owned or s.foreign):
        return s
    if not s.owned:
        raise UserError(f"{folder}: holds files {tool} did not write ({s.describe(s.foreign)}); choose an empty "
                        f"or new {flag}")
    if s.foreign:  # checked first: then every suggestion below works
        raise UserError(f"{folder}: holds {what} and files {tool} did not write ({s.describe(s.foreign)}); move "
                        f"those out or choose another {flag} ({overwrite_flag} only replaces what {tool} wrote)")
    if not overwrite:
        raise UserError(f"{folder}: already holds {what}; choose a new {flag}, or pass {overwrite_flag} to "
                        f"replace it")
    return s


def _foreign_below(path: Path, rel: str, listed: set) -> list[str]:
    """The paths at or below `rel` that are not listed (a listed folder covers all below it)."""
    if rel in listed:
        return []
    if not path.is_dir() or path.is_symlink():
        return [rel]
    return [f for name in sorted(os.listdir(path)) if _leftover(name) is None
            for f in _foreign_below(path / name, f"{rel}/{name}", listed)]


def check_shared_targets(folder: Path, tool: str, targets, *, overwrite: bool, flag: str,
                         overwrite_flag: str = "--overwrite") -> list[str]:
    """For a script that adds named files to a folder that may hold other things (clips from
    inference_lora.py, prepared data beside the user's own files). Returns the targets that exist
    and may be replaced. A target the script did not write (or a folder target with anything else
    inside) is never replaced, with or without `overwrite`; a folder another script owns whole is
    refused."""
    folder = Path(folder)
    check_writable(folder, flag)
    manifest = read_manifest(folder)
    if manifest is not None and manifest.get("tool") != tool:
        raise UserError(f"{folder}: holds {kind_of(manifest)} (written by {manifest['tool']}); choose another "
                        f"{flag}")
    listed = {p.strip("/") for p in (manifest or {}).get("paths", [])}
    targets = list(targets)
    clashes = [t for t in targets if (folder / t).exists() or (folder / t).is_symlink()]
    foreign = [f for t in clashes for f in _foreign_below(folder / t, t, listed)]
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise UserError(f"{folder}: {shown} {'was' if len(foreign) == 1 else 'were'} not written by {tool} and would "
                        f"be replaced; move {'it' if len(foreign) == 1 else 'them'} out or choose another {flag} "
                        f"(nothing was changed)")
    if clashes and not overwrite:
        raise UserError(f"{folder / clashes[0]}: already exists ({len(clashes)} of {len(targets)} outputs would be "
                        f"replaced); choose a new {flag} or pass {overwrite_flag}")
    return clashes


def check_writable(folder: Path, flag: str = "--output_dir"):
    """An output folder that cannot be created or written is one line, before any work. Tried for
    real (a temp file in the nearest existing folder): permission bits do not stop root, while a
    read-only mount or /proc still does."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: exists and is not a folder; pass {flag} a folder path")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(str(probe))
        with tempfile.TemporaryFile(dir=probe, prefix=".musicgen_lora.probe-"):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise UserError(f"{folder}: cannot write there ({probe}: {why}); pass {flag} a folder you can write "
                        f"to") from None


# --------------------------------------------------------------------------------------------
# One writer per folder
# --------------------------------------------------------------------------------------------
def lock_path(folder: Path) -> Path:
    """`.NAME.lock` beside the folder's real path: a folder reached through a symlink (or a symlinked
    parent) is the same folder, and takes the same lock."""
    folder = Path(os.path.realpath(folder))
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def output_lock(folder: Path, tool: str):
    """Hold an exclusive lock on `folder` for the block (the whole process, in practice).

    The lock is `.NAME.lock` beside the folder (inside it would be renamed away by atomic_dir).
    A second process gets one line naming the holder; a killed holder's lock is released by the
    kernel, so a stale file never blocks anyone.
    """
    folder = Path(folder)
    check_writable(folder)
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = parse_json(os.read(fd, 4096).decode() or "{}")
            except ValueError:
                holder = {}
            os.close(fd)
            who = (f"{holder.get('tool', 'another process')} (pid {holder.get('pid', '?')} on "
                   f"{holder.get('host', '?')}, since {holder.get('started', '?')})")
            raise UserError(f"{folder}: in use by {who}; wait for it to finish or stop it, or choose another "
                            f"output folder") from None
        try:  # the previous holder may have removed the file between our open and our lock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {"tool": tool, "pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500]}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)
        os.close(fd)
