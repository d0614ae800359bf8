"""User mistakes end in one clear line naming the file, and a non-zero exit -- no traceback."""
import json
import shutil

import pytest

from conftest import assert_one_line_error, run_script


def _train(model, data, out, *extra):
    return run_script("train_lora.py", "--model_path", model, "--data_dir", data, "--output_dir", out,
                      "--num_epochs", 1, "--no_progress", *extra, check=False)




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
