"""How many CPU threads torch gets: a property of the machine (the CPUs this process may use), never of
the moment's load, so the same command on the same machine gives the same clip whatever else runs.

CPU results can differ slightly between thread counts (rounding follows how work is split), so a run
records its count (sidecars, run_config.json, checkpoints) and a resumed training reuses it.

- `usable_cpus()`: the CPU affinity of this process, capped by a cgroup CPU quota (v2 cpu.max, v1
  cpu.cfs_quota_us / cpu.cfs_period_us).
- `apply_threads(n)`: --threads N, else OMP_NUM_THREADS, else the usable CPUs; more than the usable
  CPUs is a UserError. Exports OMP_NUM_THREADS / MKL_NUM_THREADS and OMP_WAIT_POLICY=PASSIVE (torch
  reads them when it is imported; child processes inherit them) and sets an imported torch's pool.
- `resume_threads(recorded)`: a resumed training takes the count its run recorded.

Why PASSIVE: libgomp's idle threads otherwise spin, and beside a busy process 2 spinning threads on 2
cores ran 3-18x slower than 1 thread; sleeping threads gave that back without changing any result
(README "Speed: precision and threads", `python -m benchmarks.threads`).

torch is never imported here: scripts call this while parsing flags, and `--help` stays instant.
"""
import logging
import math
import os
import sys
from pathlib import Path

from musicgen_lora.core.errors import UserError

CGROUP_ROOT = Path("/sys/fs/cgroup")
_current: dict | None = None
_written: str | None = None  # the OMP_NUM_THREADS value apply_threads exported
_user_value: str | None = None  # OMP_NUM_THREADS as it was before that export (the user's, or none)
log = logging.getLogger("musicgen_lora")


def _read(path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota(text: str | None, period_text: str | None = None) -> float | None:
    """CPUs a quota allows: v2 "QUOTA PERIOD" (period_text None) or v1 quota and period files;
    None for no limit ("max", -1) or text that is not a quota."""
    if text is None:
        return None
    try:
        if period_text is None:
            parts = text.split()
            if len(parts) != 2 or parts[0] == "max":
                return None
            quota, period = int(parts[0]), int(parts[1])
        else:
            quota, period = int(text), int(period_text)
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _cgroup_dirs(root: Path, mount: str, path: str) -> list[Path]:
    """The cgroup folder of this process under root/mount and each parent up to the mount point
    (a limit on any of them applies). A path that is not visible (a container's view) leaves the
    mount point itself."""
    base = root / mount if mount else root
    rel = Path(path.lstrip("/")) if path else Path()
    dirs = [base / rel] + [base / p for p in rel.parents]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()] or ([base] if base.is_dir() else [])


def cgroup_cpu_limit(root=CGROUP_ROOT, proc_cgroup="/proc/self/cgroup") -> float | None:
    """The lowest CPU quota (in CPUs, possibly fractional) of this process's cgroups, v2 or v1;
    None when there is none or nothing can be read."""
    root = Path(root)
    limits = []
    for line in (_read(proc_cgroup) or "").splitlines() or ["0::/"]:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2 (unified); in hybrid mode it holds no cpu controller
            for d in _cgroup_dirs(root, "", path) + _cgroup_dirs(root, "unified", path):
                limits.append(_quota(_read(d / "cpu.max")))
        elif "cpu" in controllers.split(","):
            for mount in dict.fromkeys([controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"]):
                for d in _cgroup_dirs(root, mount, path):
                    limits.append(_quota(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")))
    limits = [x for x in limits if x is not None]
    return min(limits) if limits else None


def usable_cpus(root=CGROUP_ROOT, proc_cgroup="/proc/self/cgroup") -> int:
    """The CPUs this process may use: its affinity (os.cpu_count() where there is none), capped by a
    cgroup CPU quota rounded down (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        n = min(n, max(1, math.floor(limit)))
    return max(1, n)


def _user_omp() -> str | None:
    """OMP_NUM_THREADS as the user set it, not as apply_threads exported it: after an export, the
    value from before it counts, so deciding again gives the same answer."""
    value = os.environ.get("OMP_NUM_THREADS")
    return _user_value if _written is not None and value == _written else value


def _decide(requested: int | None) -> tuple[int, str, int]:
    """(threads, source, usable CPUs): `requested` wins, then OMP_NUM_THREADS when a positive whole
    number, then the usable CPUs. More than the usable CPUs is refused: each extra thread only waits
    for a core, the count ends up in every record, and a huge one crashed torch with no message."""
    usable = usable_cpus()
    omp = (_user_omp() or "").strip()
    if requested:
        n, source, name = int(requested), "flag", f"--threads {requested}"
    elif omp.isdigit() and int(omp) > 0:
        n, source, name = int(omp), "OMP_NUM_THREADS", f"OMP_NUM_THREADS={omp}"
    else:
        return usable, "default", usable
    if n > usable:
        fix = f"use --threads {usable} or fewer" + (", or unset OMP_NUM_THREADS" if source != "flag" else "")
        raise UserError(f"{name}: this machine has {usable} usable CPU{'s' if usable != 1 else ''} "
                        f"(affinity/cgroup); {fix}")
    return n, source, usable


def apply_threads(requested: int | None = None, source: str | None = None) -> dict:
    """Decide the thread count (`requested` wins; None or 0: OMP_NUM_THREADS, else the usable CPUs),
    export it and the passive wait policy, and set torch's pool when torch is already imported.
    Returns (and keeps, see `current`) {"threads", "source", "usable_cpus"}; `source` names where a
    requested count came from (default "flag")."""
    global _current, _written, _user_value
    n, decided, usable = _decide(requested)
    record = {"threads": n, "source": source or decided, "usable_cpus": usable}
    if _written is None or os.environ.get("OMP_NUM_THREADS") != _written:  # set since: the user's
        _user_value = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _written = str(n)
    # Read by libgomp when torch loads it (so before `import torch`); a user's own setting stays.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        ensure_torch_threads()
    _current = record
    return record


def resume_threads(recorded: int | None):
    """A resumed training continues at the count its run recorded (`recorded`; None for a run that
    recorded none), unless --threads or OMP_NUM_THREADS chose another: then, or when this machine
    has fewer usable CPUs, one warning line says the run will not repeat an uninterrupted one exactly."""
    now = current() or apply_threads()
    if not recorded or recorded == now["threads"]:
        return
    if now["source"] == "default" and recorded <= now["usable_cpus"]:
        apply_threads(recorded, source="resumed")
        log.info(f"threads: {recorded}, as the run recorded (--threads N to choose)")
        return
    why = (f"this machine has {now['usable_cpus']} usable CPUs" if now["source"] == "default"
           else f"{'--threads' if now['source'] == 'flag' else 'OMP_NUM_THREADS'} chose {now['threads']}")
    log.warning(f"warning: the run recorded {recorded} threads but {why}: continuing at {now['threads']}, so the "
                f"result can differ slightly from an uninterrupted run")


def ensure_torch_threads():
    """Give an imported torch the decided thread count (apply_threads calls this itself when torch
    is already imported; torch imported later reads OMP_NUM_THREADS, up to its core count)."""
    torch = sys.modules.get("torch")
    if _written is None or torch is None or not hasattr(torch, "set_num_threads"):
        return
    if torch.get_num_threads() != int(_written):
        torch.set_num_threads(int(_written))


def current() -> dict | None:
    """The last apply_threads decision (None before any)."""
    return dict(_current) if _current is not None else None


def run_threads() -> dict:
    """{"threads": N}, torch's CPU threads right now, for sidecars, summaries, run_config.json and
    checkpoints: on a CPU a clip or a run repeats exactly at its thread count."""
    torch = sys.modules.get("torch")
    return {"threads": torch.get_num_threads() if torch is not None else (current() or {}).get("threads")}
