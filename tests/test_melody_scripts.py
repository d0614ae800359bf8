"""The user tools on MusicGen-Melody checkpoints (make_tiny_model.py --melody), with the flags they take
for text-only MusicGen: test_model.py names the layout and proves the labels with a melody present,
test_dataset.py reads the checkpoint's layout. (The memory plan's melody cases: test_memory_plan.py.)"""
import pytest

from conftest import run_script


@pytest.fixture(scope="module", params=[False, True], ids=["melody", "stereo-melody"])
def melody_model_dir(request, tmp_path_factory):
    stereo = request.param
    out = tmp_path_factory.mktemp("models") / ("tiny-stereo-melody" if stereo else "tiny-melody")
    run_script("make_tiny_model.py", "--output_dir", out, "--melody", *(["--stereo"] if stereo else []))
    return out


def test_test_model_checks_a_melody_checkpoint_with_a_melody(melody_model_dir, example_data_dir):
    """test_model.py: the model type, then greedy generation conditioned on a synthetic tune's chroma
    (and the null melody) reproduced by teacher forcing at 100% of audio positions, and the loss."""
    stereo = "stereo" in melody_model_dir.name
    proc = run_script("test_model.py", "--model_path", melody_model_dir, "--data_dir", example_data_dir,
                      "--target_duration", 4, "--max_clips", 2)
    out = proc.stdout + proc.stderr
    assert f"model type {'stereo-melody' if stereo else 'melody'}," in out, out[-2000:]
    assert f"{2 if stereo else 1} audio channel(s)" in out
    assert "labels line up with generate() with a melody: 100.0% of positions" in out, out[-2000:]
    assert "validation loss" in out and "model OK" in out


def test_test_dataset_reads_a_melody_checkpoint(melody_model_dir, example_data_dir):
    proc = run_script("test_dataset.py", "--data_dir", example_data_dir, "--model_path", melody_model_dir,
                      "--target_duration", 4)
    assert "dataset OK" in proc.stdout + proc.stderr


def test_test_model_names_text_only_layouts(tiny_model_dir, example_data_dir):
    """The same line for a text-only checkpoint: mono, with the label check as before (no melody)."""
    proc = run_script("test_model.py", "--model_path", tiny_model_dir, "--data_dir", example_data_dir,
                      "--target_duration", 4, "--max_clips", 2)
    out = proc.stdout + proc.stderr
    assert "model type mono," in out and "labels line up with generate(): 100.0% of positions" in out
