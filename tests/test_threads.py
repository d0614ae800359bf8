"""CPU threads (musicgen_lora/core/threads.py, --threads on every script): the CPUs this process may use, the
ones busy right now, the default that follows from them, and torch taking the count it is given.

Everything that changes the process's CPU affinity, its environment or torch's thread pool runs in a
child process, so this test session keeps its own (conftest: OMP_NUM_THREADS=1)."""
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from musicgen_lora.core import threads as threads

from conftest import LORA, ROOT, assert_one_line_error, run_script

CPUS = sorted(os.sched_getaffinity(0))


def run_python(code: str, env_extra=None, drop=("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
    """Run `code` in a fresh interpreter with the package importable and OMP_NUM_THREADS unset; its
    last stdout line is JSON."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=str(LORA), **(env_extra or {}))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture
def competitor():
    """One other process spinning in pure Python: one busy CPU, until the test ends."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield proc
    proc.kill()
    proc.wait()


# --------------------------------------------------------------------------------------------
# usable_cpus: affinity and cgroup quotas
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", sorted({1, len(CPUS)}))
def test_usable_cpus_follows_the_affinity(count):
    out, _ = run_python(f"""
        import json, os
        os.sched_setaffinity(0, {CPUS[:count]!r})
        from musicgen_lora.core.threads import usable_cpus
        print(json.dumps(usable_cpus()))
    """)
    assert out == count


@pytest.mark.skipif(not os.path.exists("/usr/bin/taskset"), reason="no taskset")
def test_usable_cpus_under_taskset():
    proc = subprocess.run(["/usr/bin/taskset", "-c", str(CPUS[0]), sys.executable, "-c",
                           "from musicgen_lora.core.threads import usable_cpus; print(usable_cpus())"],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(LORA)), timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr


def _cgroup_tree(root, files: dict, proc_line: str):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "self-cgroup").write_text(proc_line + "\n")
    return root / "fs", root / "self-cgroup"


@pytest.mark.parametrize("files,proc_line,limit", [
    ({"fs/cpu.max": "max 100000\n"}, "0::/", None),                          # v2, no quota
    ({"fs/cpu.max": "150000 100000\n"}, "0::/", 1.5),                        # v2, 1.5 CPUs
    ({"fs/cpu.max": "max 100000\n", "fs/job/cpu.max": "50000 100000\n"}, "0::/job", 0.5),  # a nested group's
    ({"fs/cpu.max": "300000 100000\n", "fs/job/cpu.max": "max 100000\n"}, "0::/job", 3.0),  # a parent's
    ({"fs/cpu.max": "300000 100000\n"}, "0::/not/visible/here", 3.0),        # a container's view
    ({"fs/cpu/cpu.cfs_quota_us": "-1\n", "fs/cpu/cpu.cfs_period_us": "100000\n"}, "1:cpu:/", None),  # v1, none
    ({"fs/cpu,cpuacct/cpu.cfs_quota_us": "250000\n", "fs/cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/", 2.5),                                                # v1, 2.5 CPUs
    ({"fs/cpu.max": "lots of cpus\n"}, "0::/", None),                        # odd text
    ({"fs/cpu.max": "0 100000\n"}, "0::/", None),                            # odd quota
    ({"fs/cpu/cpu.cfs_quota_us": "x\n"}, "1:cpu:/", None),                   # odd v1, no period
    ({}, "0::/", None),                                                      # nothing there
], ids=["v2-max", "v2-1.5", "v2-nested", "v2-parent", "v2-hidden-path", "v1-none", "v1-2.5", "odd", "zero",
        "v1-odd", "missing"])
def test_cgroup_quotas(tmp_path, files, proc_line, limit):
    root, proc_cgroup = _cgroup_tree(tmp_path, files, proc_line)
    assert threads.cgroup_cpu_limit(root, proc_cgroup) == limit
    expected = len(CPUS) if limit is None else min(len(CPUS), max(1, int(limit)))
    assert threads.usable_cpus(root, proc_cgroup) == expected


def test_no_cgroup_files_at_all(tmp_path):
    assert threads.cgroup_cpu_limit(tmp_path / "none", tmp_path / "no-such-file") is None
    assert threads.usable_cpus(tmp_path / "none", tmp_path / "no-such-file") == len(CPUS)


# --------------------------------------------------------------------------------------------
# busy_cpus: /proc/loadavg's running count, this process left out
# --------------------------------------------------------------------------------------------
def _tasks(root, states):
    """A fake /proc/self/task: one thread per state letter (R running, S sleeping)."""
    for i, state in enumerate(states):
        (root / str(100 + i)).mkdir(parents=True)
        (root / str(100 + i) / "stat").write_text(f"{100 + i} (python3 (x) y) {state} 1 2 3 4")
    return root


@pytest.mark.parametrize("text,own,busy", [
    ("0.52 0.40 0.31 1/210 4242", "R", 0), ("2.00 1.50 1.00 3/210 4242", "R", 2),
    # numpy's OpenBLAS threads spin after import: this process's own running threads are not "busy"
    ("2.00 1.50 1.00 3/210 4242", "RRR", 0), ("2.00 1.50 1.00 3/210 4242", "RRS", 1),
    ("0.0 0.0 0.0 0/5 1", "R", 0), ("garbage", "R", 0), ("", "R", 0)])
def test_busy_cpus_reads_the_running_count(tmp_path, text, own, busy):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(text)
    tasks = _tasks(tmp_path / "task", own)
    assert threads.own_running_threads(tasks) == max(1, own.count("R"))
    assert threads.busy_cpus(samples=2, interval=0, loadavg=loadavg, task_dir=tasks) == busy
    assert threads.busy_cpus(loadavg=tmp_path / "missing") == 0


def test_busy_cpus_counts_a_competing_busy_process(competitor):
    deadline, seen = time.monotonic() + 20, []
    while time.monotonic() < deadline:
        seen.append(threads.busy_cpus())
        if seen[-1] >= 1:
            break
        time.sleep(0.05)
    assert seen[-1] >= 1, seen


# --------------------------------------------------------------------------------------------
# default_threads and apply_threads
# --------------------------------------------------------------------------------------------
@pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs")
def test_default_drops_to_one_thread_beside_a_busy_process(competitor):
    """Two usable CPUs (affinity narrowed to two) and one other busy process: 1 thread, and the
    script's log says why."""
    out, err = run_python(f"""
        import json, logging, os, time
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        os.sched_setaffinity(0, {CPUS[:2]!r})
        from musicgen_lora.core.threads import apply_threads, default_threads
        deadline = time.monotonic() + 20
        while default_threads()[0] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        chosen = default_threads()
        print(json.dumps({{"default": chosen, "applied": apply_threads(None), "env": os.environ["OMP_NUM_THREADS"]}}))
    """)
    assert out["default"][0] == 1 and out["default"][1].startswith("2 usable CPUs, "), out
    applied = out["applied"]
    assert applied["source"] == "default" and applied["usable_cpus"] == 2
    if applied["threads"] == 1:  # busy right then too (it is instantaneous): the log line says why
        assert out["env"] == "1" and applied["busy_cpus"] >= 1
        assert "threads: 1 (2 usable CPUs, " in err and " busy: " in err, err


@pytest.mark.parametrize("omp,expected", [("3", (3, "OMP_NUM_THREADS")), ("0", None), ("many", None)])
def test_omp_num_threads_wins_when_set_to_a_positive_number(omp, expected):
    out, err = run_python("""
        import json
        from musicgen_lora.core.threads import apply_threads, current, default_threads
        before = current()
        print(json.dumps({"before": before, "default": default_threads(), "applied": apply_threads(None),
                          "again": apply_threads(None), "current": current()}))
    """, env_extra={"OMP_NUM_THREADS": omp})
    assert out["before"] is None
    if expected:
        assert tuple(out["default"]) == expected
        assert out["applied"]["threads"] == 3 and out["applied"]["source"] == "OMP_NUM_THREADS"
    else:  # not a positive number: the default policy
        assert "usable CPU" in out["default"][1] and out["applied"]["source"] == "default"
    # Deciding again after the export gives the same source (its own export is not the user's setting).
    assert out["again"]["source"] == out["applied"]["source"] and out["current"] == out["again"]
    assert "threads:" not in err or out["applied"]["source"] == "default"


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("when", ["before import torch", "after import torch"])
def test_torch_takes_the_applied_count(n, when):
    """Run with OMP_NUM_THREADS unset: apply_threads(n) before `import torch` (the environment torch
    reads at import) or after it (torch.set_num_threads), torch.get_num_threads() == n."""
    if n > len(CPUS):
        pytest.skip(f"needs {n} CPUs")
    first, second = ("apply", "import") if when.startswith("before") else ("import", "apply")
    out, _ = run_python(f"""
        import json, os, sys
        from musicgen_lora.core.threads import apply_threads, current
        steps = {{"apply": lambda: apply_threads({n}), "import": lambda: __import__("torch")}}
        steps["{first}"](); steps["{second}"]()
        import torch
        print(json.dumps({{"torch": torch.get_num_threads(), "env": os.environ["OMP_NUM_THREADS"],
                          "mkl": os.environ["MKL_NUM_THREADS"], "current": current()}}))
    """)
    assert out["torch"] == n and out["env"] == out["mkl"] == str(n)
    assert out["current"]["threads"] == n and out["current"]["source"] == "flag"


@pytest.mark.slow
def test_omp_num_threads_alone_sets_torch_up_to_the_cores():
    """What apply_threads relies on: torch (MKL) takes OMP_NUM_THREADS from the environment at import,
    at most its core count (MKL's cap); ensure_torch_threads() gives torch any count after import."""
    more = len(CPUS) + 1
    out, _ = run_python(f"""
        import json, os
        from musicgen_lora.core.threads import apply_threads, ensure_torch_threads
        apply_threads({more})
        import torch
        at_import = torch.get_num_threads()
        ensure_torch_threads()
        print(json.dumps({{"at_import": at_import, "after": torch.get_num_threads()}}))
    """)
    assert out["at_import"] <= more and out["after"] == more
    for n in sorted({1, len(CPUS)}):
        plain, _ = run_python("import json, torch; print(json.dumps(torch.get_num_threads()))",
                              env_extra={"OMP_NUM_THREADS": str(n)})
        assert plain == n


# --------------------------------------------------------------------------------------------
# --threads on the scripts
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_threads_flag_is_what_the_work_runs_with(tiny_model_dir, tmp_path):
    """--threads 1 beside OMP_NUM_THREADS=2: the clip's sidecar records torch's threads while it was
    generated. The control, which a script ignoring --threads would also give: the same command
    without the flag runs at OMP_NUM_THREADS's 2."""
    def threads_of(*flags):
        out = tmp_path / f"gen{len(flags)}"
        run_script("inference_lora.py", "--model_path", tiny_model_dir, "--prompts", "x", "--duration", 0.2,
                   "--output_dir", out, "--no_progress", *flags, env={"OMP_NUM_THREADS": "2"})
        return json.loads((out / "00_x.json").read_text())["threads"]

    assert threads_of("--threads", 1) == 1 and threads_of() == 2


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two"])
def test_bad_threads_value_is_one_line(tmp_path, value):
    proc = run_script("make_tiny_model.py", "--output_dir", tmp_path / "m", "--threads", value, check=False)
    assert_one_line_error(proc, "--threads", "whole number >= 1")
    assert not (tmp_path / "m").exists()


def test_threads_from_a_config_file_and_the_command_line(tmp_path):
    """train_lora.py's YAML config takes `threads` like any flag; the command line wins; applied after parsing."""
    out, _ = run_python(f"""
        import json, os
        from musicgen_lora.cli.args import parse_args_with_config
        from musicgen_lora.cli.train import build_parser
        from musicgen_lora.core.threads import current
        cfg = {str(tmp_path / "c.yaml")!r}
        open(cfg, "w").write("threads: 1\\nbatch_size: 3\\n")
        a = parse_args_with_config(build_parser(), ["--config", cfg])
        first = [a.threads, a.batch_size, a.config_keys, current(), os.environ["OMP_NUM_THREADS"]]
        b = parse_args_with_config(build_parser(), ["--config", cfg, "--threads", "2"])
        print(json.dumps(first + [b.threads, current()["threads"], os.environ["OMP_NUM_THREADS"]]))
    """)
    threads_1, batch, keys, record, env, threads_2, record_2, env_2 = out
    assert (threads_1, batch, keys, env) == (1, 3, ["batch_size", "threads"], "1")
    assert record["threads"] == 1 and record["source"] == "flag"
    assert (threads_2, record_2, env_2) == (2, 2, "2")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("threads: 0\n")
    proc = run_script("train_lora.py", "--config", cfg, "--output_dir", tmp_path / "run", check=False)
    assert_one_line_error(proc, str(cfg), "threads", "whole number >= 1")


def test_a_script_with_its_own_threads_flag_keeps_it():
    """benchmarks/encoding.py defines --threads (0: torch's own choice): the shared flag steps aside."""
    from musicgen_lora.cli.args import Parser

    p = Parser()
    p.add_argument("--threads", type=int, default=0, help="own")
    assert p.parse_args([]).threads == 0 and p._threads_action is None
    g = Parser().add_argument_group("x")
    g.add_argument("--threads", type=int, default=5, help="own, in a group")
    q = Parser(threads_flag=False)
    assert not any("--threads" in a.option_strings for a in q._actions)
    proc = run_script("benchmarks.encoding", "--help")
    assert "torch CPU threads; 0 keeps torch's own choice" in proc.stdout
    assert proc.stdout.count("--threads THREADS") == 2  # usage + its own entry, not the shared one


def test_benchmark_threads_help_and_bad_values(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "benchmarks.threads", "--help"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not re.findall(r"\| +(torch|transformers|peft)$", proc.stderr, re.M)
    assert "--counts" in proc.stdout and "--threads" not in proc.stdout.split("options:")[1]
    for flag, value in (("--counts", "1,x"), ("--counts", "2,2"), ("--sizes", "huge")):
        bad = run_script("benchmarks.threads", flag, value, "--work_dir", tmp_path / "w", check=False)
        assert_one_line_error(bad, flag)
        assert not (tmp_path / "w").exists()
