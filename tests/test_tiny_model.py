"""The offline checkpoint builder: loads like a real MusicGen folder, deterministic per seed."""
import hashlib

from transformers import AutoProcessor, MusicgenForConditionalGeneration

from conftest import SCRIPTS, run_script


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_builds_and_loads_like_a_real_checkpoint(tiny_model_dir, tmp_path):
    model = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert model.decoder.config.num_codebooks == model.config.audio_encoder.num_quantizers == 4
    assert model.config.audio_encoder.sampling_rate == 32000
    enc = processor(text=["lo-fi hip hop beat"], return_tensors="pt")
    assert enc["input_ids"].shape[1] > 2 and (enc["input_ids"] != 2).all()  # no <unk> for known words

    again = tmp_path / "again"
    other = tmp_path / "other"
    run_script(SCRIPTS / "make_tiny_model.py", "--output_dir", again, "--seed", 0)
    run_script(SCRIPTS / "make_tiny_model.py", "--output_dir", other, "--seed", 1)
    assert _digest(again) == _digest(tiny_model_dir)
    assert _digest(other) != _digest(tiny_model_dir)
