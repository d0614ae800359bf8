"""Run a command and measure ITS OWN peak RSS (tests and benchmarks of bounded memory).

wait4's ru_maxrss of a direct child is useless for this: Linux starts a forked child's peak at the
parent's and keeps it over exec, so every child of a 600 MB pytest "peaks" at >= 600 MB and a memory
test would pass whatever the code did (tests/test_limits.py did, in the full suite). A small
launcher process (stdlib only, a few MB) forks the command instead: its peak starts at the
launcher's, and wait4 there gives the command's own figure.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

# argv: cap_bytes (0: none), report path, command... ; writes "exit_code peak_kib" to the report.
_LAUNCHER = """
import os, resource, sys
cap, report, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
pid = os.fork()
if pid == 0:
    try:
        if cap:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_with_peak(cmd, cap_bytes: int | None = None, env=None, stdout=subprocess.DEVNULL, stderr=None,
                  timeout: float | None = None) -> tuple[int, float]:
    """(exit code, peak RSS in MB) of `cmd` run under an address-space cap of `cap_bytes` (so a
    regression ends in an allocation error, never takes the machine down). stdout/stderr: as for
    subprocess.Popen. A signal gives a negative exit code, as Popen's returncode does."""
    fd, report = tempfile.mkstemp(prefix="peak-", suffix=".txt")
    os.close(fd)
    try:
        # Its own session: a timeout stops the launcher and the command together.
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(cap_bytes or 0), report, *map(str, cmd)],
                                env=env, stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"the memory launcher failed (exit {proc.returncode}) running {cmd!r}")
        code, peak_kib = open(report).read().split()
    finally:
        os.unlink(report)
    return int(code), int(peak_kib) / 1024
