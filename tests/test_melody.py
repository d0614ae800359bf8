"""MusicGen-Melody training: each window is conditioned on the chroma of the same window (cached and
uncached paths identical), with audiocraft's conditioning dropout, optionally from another file
(`condition_audio`); and a real CLI run whose held-out loss shows the melody is used."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_lora.chroma import chroma_features, file_chroma, window_frames
from musicgen_lora.data.code_cache import ChromaCache, CodeCache
from musicgen_lora.data.dataset import Collator, MusicDataset
from musicgen_lora.data.metadata import read_metadata
from musicgen_lora.modeling import load_model_and_processor, model_info

SR = 32000


def tune(pitch_classes, seconds_per_note=0.5, sr=SR, seed=0):
    """Sine notes (with a second harmonic) at the given pitch classes, octave 4, random phases."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds_per_note * sr)) / sr
    notes = [np.sin(2 * np.pi * 261.63 * 2 ** (p / 12) * t + rng.uniform(0, 2 * np.pi))
             + 0.3 * np.sin(4 * np.pi * 261.63 * 2 ** (p / 12) * t) for p in pitch_classes]
    wav = 0.3 * np.concatenate(notes) + 0.003 * rng.standard_normal(len(t) * len(pitch_classes))
    return wav.astype(np.float32)


@pytest.fixture(scope="module")
def melody_data(tmp_path_factory):
    """Six clips of different tunes, 5 s each; clip 5 is conditioned on a separate stem."""
    out = tmp_path_factory.mktemp("melody-data")
    rng = np.random.default_rng(3)
    entries = []
    for i in range(6):
        sf.write(out / f"clip_{i}.wav", tune(rng.integers(0, 12, 10), seed=i), SR)
        entries.append({"audio": f"clip_{i}.wav", "description": "a synth tune"})
    sf.write(out / "stem.wav", tune([0, 4, 7, 0, 4, 7, 0, 4, 7, 0], sr=44100, seed=9), 44100)  # another rate
    entries[5]["condition_audio"] = "stem.wav"
    (out / "metadata.json").write_text(json.dumps({"train": entries[:4] + entries[5:], "valid": entries[4:5]}))
    return out


def test_cached_and_uncached_windows_get_the_same_chroma(tiny_melody_model_dir, melody_data, tmp_path):
    model, processor = load_model_and_processor(str(tiny_melody_model_dir))
    info = model_info(model)
    assert info["chroma_length"] == 235
    clips = read_metadata(melody_data)["train"]
    sr, hop = info["sample_rate"], info["hop_length"]
    code_files = CodeCache(tmp_path / "cache", model, sr).fill(clips, progress=False)
    chroma_files = ChromaCache(tmp_path / "cache", sr, hop).fill([c.melody_path for c in clips], progress=False)
    kw = dict(sample_rate=sr, target_duration=2.0, train=True, seed=7, hop_length=hop, audio_channels=1)
    cached = MusicDataset(clips, code_files=code_files, chroma_files=chroma_files, **kw)
    uncached = MusicDataset(clips, chroma=True, **kw)
    collate = Collator(processor, 2 * sr, hop, chroma_length=info["chroma_length"])
    for epoch in range(3):
        cached.set_epoch(epoch), uncached.set_epoch(epoch)
        for i in range(len(clips)):
            a, b = cached[i], uncached[i]
            assert a["frame_offset"] == b["frame_offset"]
            assert torch.equal(a["chroma"], b["chroma"])
            if clips[i].condition_path is None:  # (the stem is shorter than its clip: late windows get fewer)
                assert a["chroma"].shape == (1 + 2 * sr // 4096, 12)
            first, count = window_frames(a["frame_offset"] * hop, 2 * sr)
            assert torch.equal(a["chroma"], file_chroma(clips[i].melody_path, sr, 30 * sr, first, count))
        batch = collate([cached[i] for i in range(len(clips))])
        assert batch["input_features"].shape == (len(clips), 235, 12)
    # condition_audio: clip 5's chroma is the stem's C-E-G, not its own tune
    stem = clips[-1]
    assert stem.condition_path.name == "stem.wav"
    classes = set(cached.item(len(clips) - 1, frame_offset=0)["chroma"].argmax(-1)[1:-1].tolist())
    assert classes <= {0, 4, 7}, classes


def test_chroma_dropout_gives_the_null_chroma_reproducibly(tiny_melody_model_dir, melody_data):
    from musicgen_lora.chroma import null_chroma

    model, processor = load_model_and_processor(str(tiny_melody_model_dir))
    info = model_info(model)
    clips = read_metadata(melody_data)["train"] * 20
    kw = dict(sample_rate=info["sample_rate"], target_duration=1.0, hop_length=info["hop_length"], audio_channels=1,
              chroma=True, seed=1)
    dropped = MusicDataset(clips, train=True, chroma_dropout=0.5, **kw)
    again = MusicDataset(clips, train=True, chroma_dropout=0.5, **kw)
    valid = MusicDataset(clips[:5], train=False, chroma_dropout=0.5, **kw)
    none = [dropped[i]["chroma"] is None for i in range(len(clips))]
    assert none == [again[i]["chroma"] is None for i in range(len(clips))]  # (seed, epoch, index)
    assert 0.35 < np.mean(none) < 0.65
    assert all(valid[i]["chroma"] is not None for i in range(5))  # validation keeps every melody
    batch = Collator(processor, info["sample_rate"], info["hop_length"], chroma_length=235)(
        [dropped[i] for i in range(6)])
    for row, was_dropped in zip(batch["input_features"], none[:6]):
        assert torch.equal(row, null_chroma(235)) == was_dropped


def test_chroma_features_of_a_tune_follow_its_notes():
    classes = chroma_features(tune([0, 4, 7, 11], seconds_per_note=1.0), SR)[0].argmax(-1)
    assert set(classes[1:-1].tolist()) <= {0, 4, 7, 11}


def test_training_learns_to_use_the_melody(tiny_melody_model_dir, tmp_path):
    """Through the real CLI: seven steady tones (periods that divide the codec hop, so each has its own
    steady codes), one description for all, so only the chroma tells them apart at a clip's first
    frames. The trainer's melody check must find the held-out loss with each clip's own melody lower
    than with another clip's -- by far more than the base model's -- and the loss must fall. A model
    that ignored input_features, or a chroma from the wrong window, could not do this."""
    from conftest import run_script

    data = tmp_path / "tones"
    data.mkdir()
    entries = []
    t = np.arange(int(0.1 * SR)) / SR
    for f in (350, 400, 450, 500, 550, 600, 650):
        sf.write(data / f"{f}.wav", (0.4 * (np.sin(2 * np.pi * f * t) + 0.25 * np.sin(4 * np.pi * f * t))).astype(
            np.float32), SR)
        entries.append({"audio": f"{f}.wav", "description": "a synth tone"})
    # The validation clips are the training tones: the point is that the melody is used, not style.
    (data / "metadata.json").write_text(json.dumps({"train": entries * 24, "valid": entries}))
    run = tmp_path / "run"
    proc = run_script("train_lora.py", "--model_path", tiny_melody_model_dir, "--data_dir", data, "--output_dir", run,
                      "--target_duration", 0.1, "--batch_size", 16, "--gradient_accumulation_steps", 1,
                      "--max_steps", 300, "--num_epochs", 1000, "--learning_rate", 3e-3, "--lora_rank", 32,
                      "--lora_alpha", 64, "--lora_dropout", 0, "--text_dropout", 0, "--word_dropout", 0,
                      "--chroma_dropout", 0.2, "--warmup_steps", 0, "--save_steps", 0, "--logging_steps", 100,
                      "--sample_every", 10, "--sample_duration", 0.1, "--no_progress")
    out = proc.stdout + proc.stderr
    assert "conditioning dropout: text 0.0, words 0.0, melody 0.2" in out
    summary = json.loads((run / "logs" / "summary.json").read_text())
    check = summary["melody_check"]
    print(f"melody check: {check}")
    assert summary["best_valid_loss"] < summary["base_valid_loss"] - 1.0
    assert check["adapter"]["own"] < check["adapter"]["other"] and check["adapter"]["own"] < check["adapter"]["none"]
    assert check["melody_gain"]["adapter"] > 10 * abs(check["melody_gain"]["base"])
    assert "melody check (held-out loss)" in out and "does not follow the melody" not in out
    # --sample_every follows the validation clips' melodies (sidecars say which)
    side = json.loads(next((run / "samples").glob("step-*/00.json")).read_text())
    assert side["melody"].endswith("350.wav")
