"""How many CPU threads torch gets: the CPUs this process may use, minus those busy right now.

Why not torch's own default (every CPU of the machine): on a shared machine intra-op threads that
outnumber the free CPUs spin against the other processes (README "Speed: precision and threads"
has the figures; `python -m benchmarks.threads` measures it on yours). Results (codes, clips, losses) can
differ slightly between thread counts (CPU rounding follows how work is split), so a run repeats
exactly only at the same --threads.

- `usable_cpus()`: the CPU affinity of this process, capped by a cgroup CPU quota (v2 cpu.max, v1
  cpu.cfs_quota_us / cpu.cfs_period_us).
- `busy_cpus()`: other tasks running right now (the 4th field of /proc/loadavg: instantaneous,
  unlike the load averages).
- `default_threads()`: OMP_NUM_THREADS when set, else usable - busy (at least 1).
- `apply_threads(n)`: decide, export OMP_NUM_THREADS / MKL_NUM_THREADS (torch reads them when it is
  imported; child processes inherit them) and, when torch is already imported, set its pool.
  `current()` gives the decision, for run records.

Standard library only, and torch is never imported here: scripts call this while parsing flags,
and `--help` stays instant.
"""
import logging
import math
import os
import sys
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_current: dict | None = None
_written: str | None = None  # the OMP_NUM_THREADS value apply_threads exported
_user_value: str | None = None  # OMP_NUM_THREADS as it was before that export (the user's, or none)


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
    lines = (_read(proc_cgroup) or "").splitlines() or ["0::/"]
    for line in lines:
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


def running_tasks(loadavg="/proc/loadavg") -> int | None:
    """Tasks running or runnable right now, machine-wide (this one included); None if unreadable."""
    fields = (_read(loadavg) or "").split()
    try:
        return int(fields[3].split("/")[0])
    except (IndexError, ValueError):
        return None


def own_running_threads(task_dir="/proc/self/task") -> int:
    """Threads of THIS process running or runnable right now (at least 1: the caller). numpy's
    OpenBLAS pool spins for a while after `import numpy`, and those threads are in /proc/loadavg's
    count too: without taking them out, a quiet machine looked busy to every script."""
    running = 0
    try:
        for task in os.scandir(task_dir):
            stat = _read(os.path.join(task.path, "stat")) or ""
            # "pid (comm) S ...": the state follows the last ')' (comm may hold spaces and parens)
            if stat[stat.rfind(")") + 2:stat.rfind(")") + 3] == "R":
                running += 1
    except OSError:
        pass
    return max(1, running)


def busy_cpus(samples: int = 3, interval: float = 0.01, loadavg="/proc/loadavg", task_dir="/proc/self/task") -> int:
    """Tasks of OTHER processes running right now: /proc/loadavg's running count minus this process's
    running threads (never negative; 0 when unreadable). The least of `samples` readings `interval` s
    apart, so a task that merely woke up for a moment does not count as busy."""
    counts = []
    for i in range(max(1, samples)):
        if i:
            time.sleep(interval)
        n = running_tasks(loadavg)
        if n is None:
            return 0
        counts.append(n - own_running_threads(task_dir))
    return max(0, min(counts))


def _user_omp() -> int | None:
    """OMP_NUM_THREADS as the user set it (a positive int), not as apply_threads exported it: after an
    export, the value from before it counts, so deciding again gives the same answer."""
    value = os.environ.get("OMP_NUM_THREADS")
    if _written is not None and value == _written:
        value = _user_value
    try:
        n = int((value or "").strip())
    except ValueError:
        return None
    return n if n > 0 else None


def _why(usable: int, busy: int) -> str:
    words = f"{usable} usable CPU{'s' if usable != 1 else ''}, {busy} busy"
    if busy:
        words += ": another process is running" if busy == 1 else f": {busy} other tasks are running"
    return words


def _decide(requested: int | None) -> tuple[int, str, int, int]:
    """(threads, source, usable CPUs, busy CPUs): `requested` wins, then OMP_NUM_THREADS as the user
    set it, then the usable CPUs minus the busy ones, at least 1."""
    usable, busy = usable_cpus(), busy_cpus()
    if requested:
        return int(requested), "flag", usable, busy
    if (omp := _user_omp()) is not None:
        return omp, "OMP_NUM_THREADS", usable, busy
    return max(1, usable - busy), "default", usable, busy


def default_threads() -> tuple[int, str]:
    """(threads, why) without --threads: OMP_NUM_THREADS when set to a positive int, else the usable
    CPUs minus the busy ones, at least 1."""
    n, source, usable, busy = _decide(None)
    return n, (_why(usable, busy) if source == "default" else source)


def apply_threads(requested: int | None = None) -> dict:
    """Decide the thread count (`requested` wins; None or 0: default_threads), export it as
    OMP_NUM_THREADS and MKL_NUM_THREADS (torch reads them when imported; child processes inherit
    them) and set torch's pool when torch is already imported. Returns (and keeps, see `current`)
    {"threads", "source": "flag" | "OMP_NUM_THREADS" | "default", "usable_cpus", "busy_cpus"}."""
    global _current, _written, _user_value
    n, source, usable, busy = _decide(requested)
    record = {"threads": n, "source": source, "usable_cpus": usable, "busy_cpus": busy}
    if _written is None or os.environ.get("OMP_NUM_THREADS") != _written:  # set since: the user's
        _user_value = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _written = str(n)
    if "torch" in sys.modules:
        ensure_torch_threads()
    if source == "default" and n < usable and record != _current:
        # common.log's logger, by name: common imports this module (resolve_device)
        logging.getLogger("musicgen_lora").info(f"threads: {n} ({_why(usable, busy)}; --threads N to choose)")
    _current = record
    return record


def ensure_torch_threads():
    """Give an imported torch the decided thread count (apply_threads calls this itself when torch
    is already imported; torch imported later reads OMP_NUM_THREADS)."""
    torch = sys.modules.get("torch")
    if _written is None or torch is None or not hasattr(torch, "set_num_threads"):
        return
    if torch.get_num_threads() != int(_written):
        torch.set_num_threads(int(_written))


def current() -> dict | None:
    """The last apply_threads decision (None before any): for run_config.json and sidecars."""
    return dict(_current) if _current is not None else None


def run_threads() -> dict:
    """{"threads": N}, torch's CPU threads right now, for sidecars, summaries and run_config.json: on
    a CPU a clip or a run is reproducible at its thread count only (results differ slightly between
    1 and 2 threads)."""
    torch = sys.modules.get("torch")
    return {"threads": torch.get_num_threads() if torch is not None else (current() or {}).get("threads")}
