"""Flags: a bad value is one line naming the flag, exit 2, before anything loads or is written (the
same rule for a config file); --help shows every default and starts without torch."""
import re
import subprocess
import sys

import pytest

from conftest import LORA, ROOT, SCRIPTS, assert_one_line_error, run_script

SCRIPTS_WITH_HELP = [[str(LORA / n)] for n in ("train_lora.py", "evaluate.py", "inference_lora.py", "prepare_data.py",
                                                "test_dataset.py", "test_model.py")] + \
                    [[str(SCRIPTS / n)] for n in ("compare_runs.py", "make_tiny_model.py", "make_test_signals.py",
                                                  "convert_adapter.py", "memory_plan.py")] + \
                    [["-m", f"benchmarks.{n}"] for n in ("flag_figures", "store", "prepare", "encoding", "threads")]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS_WITH_HELP, ids=lambda argv: argv[-1].rsplit("/", 1)[-1])
def test_help_shows_every_default_and_imports_no_torch(script):
    """A real process: what --help imports is what is tested."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *script, "--help"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy = re.findall(r"\| +(torch|transformers|peft|accelerate|librosa)$", proc.stderr, re.M)
    assert not heavy, f"--help imported {sorted(set(heavy))}"
    entries = re.split(r"\n(?=  -)", proc.stdout)
    flags = [e for e in entries if e.startswith("  -") and not e.startswith("  -h")]
    assert flags
    missing = [e.split()[0] for e in flags if "default" not in e.lower() and "Undo --" not in e]
    assert not missing, f"no default shown for {missing}"


TRAIN_BAD = [
    (["--logging_steps", "0"], "--logging_steps", "whole number >= 1"),
    (["--learning_rate", "-1"], "--learning_rate", "number >= 0"),
    (["--learning_rate", "nan"], "--learning_rate", "number >= 0"),
    (["--lora_alpha", "0"], "--lora_alpha", "number > 0"),
    (["--lora_rank", "0"], "--lora_rank", "whole number >= 1"),
    (["--lora_dropout", "1"], "--lora_dropout", "[0, 1)"),
    (["--text_dropout", "2"], "--text_dropout", "[0, 1]"),
    (["--warmup_steps", "-1"], "--warmup_steps", ">= 0"),
    (["--max_grad_norm", "-0.5"], "--max_grad_norm", ">= 0"),
    (["--sample_every", "-2"], "--sample_every", ">= 0"),
    (["--num_epochs", "0"], "--num_epochs", ">= 1"),
    (["--batch_size", "1.5"], "--batch_size", "whole number"),
    (["--target_duration", "inf"], "--target_duration", "number > 0"),
    (["--fp16", "--bf16"], "--fp16 and --bf16", "pick one"),
    (["--lora_target_modules", "q_proj,(.*)"], "--lora_target_modules", "layer names"),
    (["--resume_from_checkpoint", "latest", "--overwrite_output_dir"], "--resume_from_checkpoint", "one of them"),
    (["--no_such_flag"], "unrecognized arguments", "--no_such_flag"),
]


@pytest.mark.parametrize("extra,flag,needle", TRAIN_BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_train_flag_values_are_checked_before_anything_runs(tmp_path, extra, flag, needle):
    out = tmp_path / "run"
    proc = run_script("train_lora.py", "--model_path", tmp_path / "no-model", "--data_dir", tmp_path / "no-data",
                      "--output_dir", out, *extra, check=False)
    assert_one_line_error(proc, flag, needle)
    assert not out.exists() and "usage:" not in proc.stderr


@pytest.mark.parametrize("script,extra,flag", [
    ("inference_lora.py", ["--duration", "nan"], "--duration"),
    ("inference_lora.py", ["--temperature", "0"], "--temperature"),
    ("inference_lora.py", ["--top_p", "1.5"], "--top_p"),
    ("evaluate.py", ["--guidance_scale", "-1"], "--guidance_scale"),
    ("evaluate.py", ["--num_samples_per_prompt", "0"], "--num_samples_per_prompt"),
    ("prepare_data.py", ["--create_example", "--valid_ratio", "1"], "--valid_ratio"),
    ("prepare_data.py", ["--input_dir", "x", "--segment_duration", "0"], "--segment_duration"),
    ("prepare_data.py", ["--input_dir", "x", "--max_compression_ratio", "-3"], "--max_compression_ratio"),
])
def test_other_scripts_check_flag_values_too(tmp_path, script, extra, flag):
    proc = run_script(script, *extra, "--output_dir", tmp_path / "out", check=False)
    assert_one_line_error(proc, flag)
    assert not (tmp_path / "out").exists()


def test_a_config_file_meets_the_same_rules(tmp_path):
    for text, needle in (("logging_steps: 0\n", "whole number >= 1"), ("text_dropout: 2\n", "[0, 1]"),
                         ("learning_rate: .nan\n", "number >= 0"), ("batch_size: null\n", "cannot be null")):
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(text)
        proc = run_script("train_lora.py", "--config", cfg, "--output_dir", tmp_path / "run", check=False)
        assert_one_line_error(proc, str(cfg), text.split(":")[0], needle)
    assert not (tmp_path / "run").exists()
