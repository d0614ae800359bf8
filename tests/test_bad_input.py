"""User mistakes end in one clear line naming the file, and a non-zero exit -- no traceback."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import assert_one_line_error, run_script


def _train(model, data, out, *extra, **popen):
    return run_script("train_lora.py", "--model_path", model, "--data_dir", data, "--output_dir", out,
                      "--num_epochs", 1, "--no_progress", *extra, check=False, **popen)




@pytest.fixture()
def data_copy(example_data_dir, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(example_data_dir, dst)
    return dst


def test_missing_audio_file(tiny_model_dir, data_copy, tmp_path):
    meta = json.loads((data_copy / "metadata.json").read_text())
    gone = data_copy / meta["train"][0]["audio"]
    gone.unlink()
    proc = _train(tiny_model_dir, data_copy, tmp_path / "out")
    assert_one_line_error(proc, str(gone), "not found")
    assert not (tmp_path / "out").exists()


def test_malformed_metadata(tiny_model_dir, data_copy, tmp_path):
    (data_copy / "metadata.json").write_text('{"train": [ {"audio": "x.wav",, } ]')
    assert_one_line_error(_train(tiny_model_dir, data_copy, tmp_path / "out"), "metadata.json", "JSON")
    (data_copy / "metadata.json").write_text('{"train": [{"audio": "train/a.wav"}]}')
    assert_one_line_error(_train(tiny_model_dir, data_copy, tmp_path / "out"), "metadata.json", "description")


def test_corrupt_audio_file(tiny_model_dir, data_copy, tmp_path):
    meta = json.loads((data_copy / "metadata.json").read_text())
    bad = data_copy / meta["valid"][0]["audio"]
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    assert_one_line_error(_train(tiny_model_dir, data_copy, tmp_path / "out"), str(bad), "cannot decode")


def test_unknown_model_path(data_copy, tmp_path):
    assert_one_line_error(_train(tmp_path / "no-such-model", data_copy, tmp_path / "out"), "no-such-model",
                           "--model_path")


def test_refuses_output_dir_holding_a_run(tiny_model_dir, data_copy, tmp_path):
    out = tmp_path / "out"
    (out / "best_model").mkdir(parents=True)
    (out / "best_model" / "keep.txt").write_text("precious")
    assert_one_line_error(_train(tiny_model_dir, data_copy, out), str(out), "--overwrite_output_dir")
    assert (out / "best_model" / "keep.txt").read_text() == "precious"


def _write_meta(data, meta):
    (data / "metadata.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("field,value,needle", [
    ("audio", 123, "the audio path must be a string"),
    ("duration", "abc", "'duration' must be seconds as a number"),
    ("description", ["a", "list"], "has no description text"),
])
def test_metadata_with_wrong_json_types_is_one_line(tiny_model_dir, data_copy, tmp_path, field, value, needle):
    meta = json.loads((data_copy / "metadata.json").read_text())
    meta["train"][1][field] = value
    _write_meta(data_copy, meta)
    proc = _train(tiny_model_dir, data_copy, tmp_path / "out")
    assert_one_line_error(proc, "metadata.json", '"train" entry 1', needle)
    assert not (tmp_path / "out").exists()


def test_duplicates_and_clips_in_both_splits_are_warned_about(data_copy):
    meta = json.loads((data_copy / "metadata.json").read_text())
    meta["train"].append(dict(meta["train"][0]))                     # the same clip twice in train
    meta["valid"].append({**meta["train"][2], "audio": "./" + meta["train"][2]["audio"]})  # spelled differently
    _write_meta(data_copy, meta)
    proc = run_script("test_dataset.py", "--data_dir", data_copy, "--target_duration", 4)
    assert "1 clip(s) listed twice in train" in proc.stderr
    assert "1 clip(s) are in both train and valid" in proc.stderr and "measures memory" in proc.stderr


def _pickled_adapter(trained_adapter, folder, payload=None):
    """A copy of a real adapter saved the old way: adapter_model.bin (a pickle), no safetensors."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(trained_adapter, folder)
    state = load_file(str(folder / "adapter_model.safetensors"))
    (folder / "adapter_model.safetensors").unlink()
    torch.save(payload if payload is not None else state, folder / "adapter_model.bin")
    return state


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this calls open(marker, "w"): code run by loading a file
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_pickled_adapter_is_refused_and_converts_safely(tiny_model_dir, trained_run, tmp_path):
    import torch
    from safetensors.torch import load_file

    run, _ = trained_run
    old = tmp_path / "old_adapter"
    state = _pickled_adapter(run / "best_model", old)
    for script, flags in (("inference_lora.py", ["--base_model_path", tiny_model_dir, "--lora_model_path", old,
                                                  "--prompts", "x", "--output_dir", tmp_path / "gen"]),
                          ("evaluate.py", ["--base_model_path", tiny_model_dir, "--lora_model_path", old, "--compare",
                                           "--test_prompts", "x", "--output_dir", tmp_path / "ev"])):
        proc = run_script(script, *flags, check=False)
        assert_one_line_error(proc, str(old), "adapter_model.bin", "musicgen_lora.cli.convert_adapter")
        assert "weights_only" not in proc.stderr
    # The suggested command works as printed, and the converted adapter is the same adapter.
    suggested = proc.stderr.split("convert an adapter you trust with: python ")[1].split()
    subprocess.run([sys.executable, *suggested], check=True, capture_output=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"))
    converted = load_file(str(old / "adapter_model.safetensors"))
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)
    run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--lora_model_path", old, "--prompts", "x",
               "--duration", 0.3, "--output_dir", tmp_path / "gen", "--no_progress")
    # A pickle that would run code when loaded is refused by the converter, and nothing runs.
    evil = tmp_path / "evil_adapter"
    marker = tmp_path / "code_ran"
    _pickled_adapter(run / "best_model", evil, payload={"x": _RunsCode(str(marker))})
    assert_one_line_error(run_script("convert_adapter.py", evil, check=False), "cannot be converted")
    assert not marker.exists() and not (evil / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_disk_full_while_saving_is_one_line_and_the_suggestion_works(tiny_model_dir, data_copy, tmp_path):
    """A file-size limit makes every write past 100 KB fail as a full disk does (EFBIG): the first
    adapter save fails. One line, files written before stay intact, and its advice gets the run done."""
    import resource

    out = tmp_path / "out"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # noqa: E731
    proc = _train(tiny_model_dir, data_copy, out, "--no_cache", "--batch_size", 4, "--target_duration", 2,
                  "--save_steps", 1, preexec_fn=limit)
    assert_one_line_error(proc, "could not be written", "file size limit reached",
                          "start again with the same command plus --overwrite_output_dir")
    assert json.loads((out / "run_config.json").read_text())["run_id"]  # written before: intact
    assert not any(p.name.startswith(".") and ".tmp-" in p.name for p in out.rglob("*"))  # no half files
    assert not (out / "best_model").exists()
    proc = _train(tiny_model_dir, data_copy, out, "--no_cache", "--batch_size", 4, "--target_duration", 2,
                  "--save_steps", 1, "--overwrite_output_dir")
    assert (out / "final_model" / "adapter_model.safetensors").is_file()


def test_output_path_that_is_a_file_or_unwritable(tiny_model_dir, data_copy, tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    assert_one_line_error(_train(tiny_model_dir, data_copy, afile), str(afile), "not a folder")
    proc = _train(tiny_model_dir, data_copy, "/proc/musicgen_run")
    assert_one_line_error(proc, "/proc/musicgen_run", "cannot write there")
    assert afile.read_text() == "x"


def test_prepare_reads_undecodable_names_and_follows_no_link_out_of_the_input(tmp_path):
    import numpy as np
    import soundfile as sf

    src = tmp_path / "in"
    src.mkdir()
    t = np.arange(14 * 32000) / 32000
    music = (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32")
    sf.write(str(src / "tmp.wav"), music, 32000)  # renamed to a name that is not valid UTF-8 (an old archive's)
    os.rename(src / "tmp.wav", os.path.join(os.fsencode(src), b"caf\xe9 latin-1.wav"))
    (src / os.fsdecode(b"caf\xe9 latin-1.txt")).write_text("warm piano")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET CONTENT")
    sf.write(str(src / "song.wav"), music, 32000)
    os.symlink(secret, src / "song.txt")  # a sidecar that is a link out of the tree: not read
    outside = tmp_path / "elsewhere.wav"
    sf.write(str(outside), music, 32000)
    os.symlink(outside, src / "linked.wav")
    out = tmp_path / "data"
    proc = run_script("prepare_data.py", "--input_dir", src, "--output_dir", out, "--default_description", "fallback",
                      "--no_progress")
    meta = json.loads((out / "metadata.json").read_text())
    entries = meta["train"] + meta["valid"]
    texts = {e["description"] for e in entries}
    assert texts == {"warm piano", "fallback"} and "SECRET" not in (out / "metadata.json").read_text()
    assert len(entries) == 2  # the undecodable name is read as audio, the link out is not
    report = json.loads((out / "prepare_report.json").read_text())
    assert [(r["source"], r["kind"]) for r in report["skipped"]] == [("linked.wav", "link outside input")]
    assert "3 found = 2 used + 1 skipped (1 links out of the input folder)" in proc.stderr
    assert os.fsdecode(b"caf\xe9 latin-1.wav") in {e["source"] for e in entries}  # its real name, recorded


@pytest.mark.slow
def test_every_suggestion_an_error_makes_works(tiny_model_dir, trained_run, tmp_path):
    run_src, _ = trained_run
    common = ["--base_model_path", tiny_model_dir, "--test_prompts", "x", "--duration", 0.3, "--no_progress"]
    # A run without best_model/: --compare_multi compares what there is.
    run = tmp_path / "run"
    shutil.copytree(run_src, run)
    shutil.rmtree(run / "best_model")
    proc = run_script("evaluate.py", *common, "--lora_model_path", run, "--compare_multi", "--output_dir",
                      tmp_path / "e1")
    assert "has no best_model/" in proc.stderr
    assert set(json.loads((tmp_path / "e1" / "summary.json").read_text())["models"]) == {"base_model", "final_model"}
    # An adapter given where a run is expected: the advice (--compare) works.
    proc = run_script("evaluate.py", *common, "--lora_model_path", run / "final_model", "--compare_multi",
                      "--output_dir", tmp_path / "e2", check=False)
    assert_one_line_error(proc, "use --compare --lora_model_path")
    run_script("evaluate.py", *common, "--lora_model_path", run / "final_model", "--compare", "--output_dir",
               tmp_path / "e2")
    # Neither adapter: the newest checkpoint is named, and comparing it works.
    shutil.rmtree(run / "final_model")
    proc = run_script("evaluate.py", *common, "--lora_model_path", run, "--compare_multi", "--output_dir",
                      tmp_path / "e3", check=False)
    assert_one_line_error(proc, "holds neither", "--compare --lora_model_path")
    checkpoint = proc.stderr.split("--compare --lora_model_path ")[1].split()[0]
    run_script("evaluate.py", *common, "--lora_model_path", checkpoint, "--compare", "--output_dir", tmp_path / "e3")
    # A finished run without checkpoints is never told to resume.
    done = tmp_path / "done"
    shutil.copytree(run_src, done)
    shutil.rmtree(done / "checkpoints")
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", tmp_path / "none",
                      "--output_dir", done, "--no_progress", check=False)
    assert_one_line_error(proc, "it finished", "--overwrite_output_dir")
    assert "--resume_from_checkpoint" not in proc.stderr
