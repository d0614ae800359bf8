"""CPU threads (musicgen_lora/core/threads.py, --threads on every script): the CPUs this process may use, the
default that follows from them whatever else runs, the refusal above them, a resume's recorded count,
and torch taking the count it is given.

Everything that changes the process's CPU affinity, its environment or torch's thread pool runs in a
child process, so this test session keeps its own (conftest: OMP_NUM_THREADS=1)."""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from musicgen_lora.core import threads as threads

from conftest import LORA, ROOT, assert_one_line_error, busy, run_script

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


# --------------------------------------------------------------------------------------------
# The count: the usable CPUs whatever the load; --threads and OMP_NUM_THREADS choose, up to them
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("omp,source", [(None, "default"), ("1", "OMP_NUM_THREADS"), ("0", "default"),
                                        ("many", "default")])
def test_the_default_is_the_usable_cpus_whatever_the_load(omp, source):
    """Beside as many busy processes as there are CPUs (where the load-aware default took 1 thread),
    apply_threads() takes every usable CPU, and deciding again gives the same; OMP_NUM_THREADS wins
    when it is a positive number. OMP_WAIT_POLICY=PASSIVE is exported unless the user chose a policy."""
    code = """
        import json, os
        from musicgen_lora.core.threads import apply_threads
        env = os.environ
        print(json.dumps([apply_threads(), apply_threads(), env["OMP_NUM_THREADS"], env["OMP_WAIT_POLICY"]]))
    """
    with busy(len(CPUS)):
        first, again, env, policy = run_python(code, env_extra={} if omp is None else {"OMP_NUM_THREADS": omp})[0]
    assert first == again and first["source"] == source and first["usable_cpus"] == len(CPUS)
    assert first["threads"] == (1 if source == "OMP_NUM_THREADS" else len(CPUS)) and env == str(first["threads"])
    assert policy == "PASSIVE"
    assert run_python(code, env_extra={"OMP_WAIT_POLICY": "ACTIVE"})[0][3] == "ACTIVE"


@pytest.mark.parametrize("flags,env,name", [(["--threads", "64"], {}, "--threads 64"),
                                            (["--threads", "100000"], {}, "--threads 100000"),
                                            ([], {"OMP_NUM_THREADS": "64"}, "OMP_NUM_THREADS=64")])
def test_more_threads_than_usable_cpus_is_one_line(tmp_path, flags, env, name):
    """--threads 100000 crashed torch with no output; --threads 64 on 2 CPUs ran 65 threads. A child
    process: a crash is what only a process shows."""
    if len(CPUS) >= 64:
        pytest.skip("needs fewer than 64 usable CPUs")
    proc = run_script("inference_lora.py", "--model_path", tmp_path / "none", "--prompts", "x", "--output_dir",
                      tmp_path / "out", *flags, check=False, subprocess=True, env=env)
    n = len(CPUS)
    assert_one_line_error(proc, f"{name}: this machine has {n} usable CPU", f"use --threads {n} or fewer")
    assert not (tmp_path / "out").exists()


def test_a_resume_takes_the_count_its_run_recorded():
    """resume_threads: the recorded count, unless --threads or OMP_NUM_THREADS chose another or this
    machine has fewer usable CPUs -- then one warning line. Each case from a fresh module state."""
    out, _ = run_python("""
        import json, logging, os
        from musicgen_lora.core import threads
        seen = []
        handler = logging.Handler()
        handler.emit = lambda record: seen.append(record.getMessage())
        logging.getLogger("musicgen_lora").addHandler(handler)
        logging.getLogger("musicgen_lora").setLevel(logging.INFO)
        results = []
        for usable, flag, omp, recorded in [(4, None, None, 2), (4, None, None, 4), (4, None, None, None),
                                            (2, None, None, 4), (4, 3, None, 2), (4, None, "1", 2)]:
            threads._current = threads._written = threads._user_value = None
            os.environ.pop("OMP_NUM_THREADS", None)
            os.environ.update({"OMP_NUM_THREADS": omp} if omp else {})
            threads.usable_cpus = lambda usable=usable: usable
            threads.apply_threads(flag)
            seen.clear()
            threads.resume_threads(recorded)
            now = threads.current()
            results.append([now["threads"], now["source"], os.environ["OMP_NUM_THREADS"], seen[:]])
        print(json.dumps(results))
    """)
    reuse, same, unrecorded, fewer, flag, omp = out
    assert reuse == [2, "resumed", "2", ["threads: 2, as the run recorded (--threads N to choose)"]]
    assert same == [4, "default", "4", []] and unrecorded == [4, "default", "4", []]
    assert fewer == [2, "default", "2", ["warning: the run recorded 4 threads but this machine has 2 usable CPUs: "
                                         "continuing at 2, so the result can differ slightly from an uninterrupted "
                                         "run"]]
    assert flag[:3] == [3, "flag", "3"] and "recorded 2 threads but --threads chose 3: continuing at 3" in flag[3][0]
    assert omp[:3] == [1, "OMP_NUM_THREADS", "1"] and "but OMP_NUM_THREADS chose 1: continuing at 1" in omp[3][0]


@pytest.mark.slow
@pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs: on 1 the load-aware default also took 1")
def test_the_same_command_gives_the_same_codes_whatever_else_runs(tiny_model_dir, tmp_path):
    """Issue 30: `inference_lora.py ... --seed 7` twice wrote different audio, 2 threads the first time
    and 1 the second. The same command, OMP_NUM_THREADS unset, quiet and beside busy processes: the
    same recorded thread count -- the machine's usable CPUs, which the load-aware default never took
    beside more busy processes than CPUs (the control) -- and bit-identical codes."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    def generate(name, spinners):
        out = tmp_path / name
        with busy(spinners):
            proc = subprocess.run([sys.executable, str(LORA / "inference_lora.py"), "--model_path", str(tiny_model_dir),
                                   "--prompts", "lofi beat", "--duration", "0.5", "--seed", "7", "--save_codes",
                                   "--no_progress", "--output_dir", str(out)], capture_output=True, text=True,
                                  env=dict(env, HF_HUB_OFFLINE="1"), timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        codes = load_file(str(out / "00_lofi-beat.codes.safetensors"))
        return json.loads((out / "00_lofi-beat.json").read_text())["threads"], codes

    quiet_threads, quiet = generate("quiet", 0)
    busy_threads, loaded = generate("busy", len(CPUS))
    assert quiet_threads == busy_threads == len(CPUS)
    assert quiet.keys() == loaded.keys() and all(torch.equal(quiet[k], loaded[k]) for k in quiet)


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


def test_benchmark_threads_help_is_torch_free_and_a_bad_value_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "benchmarks.threads", "--help"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not re.findall(r"\| +(torch|transformers|peft)$", proc.stderr, re.M)
    assert "OMP_WAIT_POLICY=PASSIVE" in proc.stdout and "--threads" not in proc.stdout.split("options:")[1]
    bad = run_script("benchmarks.threads", "--gen_seconds", "0", "--work_dir", tmp_path / "w", check=False)
    assert_one_line_error(bad, "--gen_seconds")
    assert not (tmp_path / "w").exists()
