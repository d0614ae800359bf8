"""The EnCodec code cache: hits, misses, invalidation, and training from it equals training without it.

The offline test codec is built with all-zero codebooks (a fresh EnCodec's buffers), so it emits
code 0 everywhere and any two code paths would agree. These tests first give it codebooks drawn
from its own latents (what EnCodec's k-means init does), so codes are diverse and a wrong crop or a
stale cache entry shows up as different tokens.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_lora.audio.codes import crop_codes
from musicgen_lora.audio.reader import AudioPieces, load_audio, piece_samples
from musicgen_lora.data.code_cache import CodeCache, load_codes
from musicgen_lora.data.dataset import Collator, MusicDataset
from musicgen_lora.data.metadata import Clip, read_metadata
from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
from musicgen_lora.model.codec import encode_audio, encode_pieces
from musicgen_lora.model.loss import batch_loss, labels_for_batch

from conftest import run_script


@pytest.fixture
def data_copy(example_data_dir, tmp_path):
    """4 train + 2 valid example clips cut to 6 s (longer than the tests' 4 s window): quick to encode."""
    out = tmp_path / "data"
    shutil.copytree(example_data_dir, out, ignore=shutil.ignore_patterns(".codes_cache"))
    meta = json.loads((out / "metadata.json").read_text())
    meta = {"train": meta["train"][:4], "valid": meta["valid"][:2]}
    for entry in meta["train"] + meta["valid"]:
        wav, sr = sf.read(out / entry["audio"], dtype="float32")
        sf.write(out / entry["audio"], wav[: 6 * sr], sr)
        entry["duration"] = 6.0
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


def test_codes_are_diverse_and_crop_of_codes_differs_from_codes_of_crop(tiny_model_dir, example_data_dir):
    """Why the cache stores whole clips and both paths crop codes: encoding an audio crop is not a
    crop of the clip's codes near the crop's edges (EnCodec's LSTM and non-causal convolutions)."""
    model, _ = load_model_and_processor(str(tiny_model_dir))
    clip = read_metadata(example_data_dir)["train"][0]
    wav = torch.from_numpy(load_audio(clip.audio_path, 32000))
    whole = encode_pieces(model, [wav])  # a clip under 30 s is one piece: the whole clip
    assert all(len(whole[k].unique()) > 8 for k in range(whole.shape[0]))
    o, w, hop = 50, 100, model_info(model)["hop_length"]
    crop_first = encode_audio(model, wav[o * hop:(o + w) * hop][None])[0]
    assert not torch.equal(crop_first, whole[:, o:o + w])


def test_cache_hit_miss_and_invalidation(tiny_model_dir, data_copy):
    model, _ = load_model_and_processor(str(tiny_model_dir))
    clips = read_metadata(data_copy)["train"][:3]
    cache_dir = data_copy / "cache"

    cache = CodeCache(cache_dir, model, 32000)
    paths = cache.fill(clips, progress=False)
    assert cache.stats == {"hits": 0, "misses": 3} and len(set(paths)) == 3
    codes, n = load_codes(paths[0])
    wav = load_audio(clips[0].audio_path, 32000)
    assert n == len(wav) and torch.equal(codes, encode_pieces(model, [torch.from_numpy(wav)]))
    stamp = [p.stat().st_mtime_ns for p in map(Path, paths)]

    again = CodeCache(cache_dir, model, 32000)  # a new run: hits, nothing re-encoded or rewritten
    assert again.fill(clips, progress=False) == paths and again.stats == {"hits": 3, "misses": 0}
    assert [p.stat().st_mtime_ns for p in map(Path, paths)] == stamp

    # Audio content changes -> that clip re-encodes; a touch (same bytes) does not.
    sf.write(clips[1].audio_path, wav[: 32000 * 5], 32000)
    clips[2].audio_path.touch()
    c2 = CodeCache(cache_dir, model, 32000)
    new_paths = c2.fill(clips, progress=False)
    assert c2.stats == {"hits": 2, "misses": 1} and new_paths[1] != paths[1] and new_paths[2] == paths[2]
    assert load_codes(new_paths[1])[1] == 32000 * 5

    # Another sample rate -> everything re-encodes.
    c3 = CodeCache(cache_dir, model, 16000)
    c3.fill(clips, progress=False)
    assert c3.stats == {"hits": 0, "misses": 3}

    # Another codec (one weight changed) -> everything re-encodes; the decoder does not matter.
    with torch.no_grad():
        model.decoder.lm_heads[0].weight.add_(1.0)
    assert CodeCache(cache_dir, model, 32000).codec_id == cache.codec_id
    with torch.no_grad():
        next(model.audio_encoder.encoder.parameters()).mul_(1.01)
    c4 = CodeCache(cache_dir, model, 32000)
    assert c4.codec_id != cache.codec_id
    c4.fill(clips, progress=False)
    assert c4.stats == {"hits": 0, "misses": 3}


def test_hash_memo_skips_rehashing_unchanged_files_and_catches_same_size_rewrites(tiny_model_dir, data_copy,
                                                                                 monkeypatch):
    """A second run reads no audio bytes to find its cache keys; a rewrite that keeps the size and is
    given the old mtime back (rsync -t, cp -p) is still hashed again, through ctime."""
    import os

    import musicgen_lora.data.code_cache as code_cache

    model, _ = load_model_and_processor(str(tiny_model_dir))
    clips = read_metadata(data_copy)["train"][:3]
    old = (1_600_000_000, 1_600_000_000)  # files written long before they are hashed: not "racy"
    for clip in clips:
        os.utime(clip.audio_path, old)
    hashed = []
    real = code_cache.file_sha256
    monkeypatch.setattr(code_cache, "file_sha256", lambda path, **kw: hashed.append(Path(path).name) or real(path))

    first = CodeCache(data_copy / "cache", model, 32000)
    paths = first.fill(clips, progress=False)
    assert len(hashed) == 3 and first.last_fill["hashed"] == 3
    assert (data_copy / "cache" / code_cache.HASH_MEMO_NAME).is_file()

    hashed.clear()
    second = CodeCache(data_copy / "cache", model, 32000)
    assert second.fill(clips, progress=False) == paths
    assert hashed == [] and second.stats == {"hits": 3, "misses": 0} and second.last_fill["hashed"] == 0

    wav, sr = sf.read(clips[1].audio_path, dtype="float32")
    size = clips[1].audio_path.stat().st_size
    sf.write(clips[1].audio_path, wav * 0.5, sr)
    os.utime(clips[1].audio_path, old)
    assert clips[1].audio_path.stat().st_size == size
    third = CodeCache(data_copy / "cache", model, 32000)
    new_paths = third.fill(clips, progress=False)
    assert hashed == [clips[1].audio_path.name] and third.stats == {"hits": 2, "misses": 1}
    assert new_paths[1] != paths[1] and new_paths[0] == paths[0]

    # A file hashed right after it was written is "racy": trusted only once it is older than the margin.
    clips[2].audio_path.touch()
    hashed.clear()
    CodeCache(data_copy / "cache", model, 32000).fill(clips, progress=False)
    CodeCache(data_copy / "cache", model, 32000).fill(clips, progress=False)
    assert hashed == [clips[2].audio_path.name] * 2

    # A corrupt memo costs only the hashing.
    (data_copy / "cache" / code_cache.HASH_MEMO_NAME).write_text("{not json")
    hashed.clear()
    fourth = CodeCache(data_copy / "cache", model, 32000)
    assert fourth.fill(clips, progress=False) == new_paths and len(hashed) == 3 and fourth.stats["misses"] == 0


def test_cached_and_uncached_batches_give_same_labels_and_loss(tiny_model_dir, data_copy):
    """Same seed and epoch -> same random crop -> identical labels and loss, from cache or from audio."""
    model, processor = load_model_and_processor(str(tiny_model_dir))
    info = model_info(model)
    sr, hop = info["sample_rate"], info["hop_length"]
    clips = read_metadata(data_copy)["train"][:4]
    files = CodeCache(data_copy / "cache", model, sr).fill(clips, progress=False)
    collate = Collator(processor, 4 * sr, hop)
    offsets = []
    for epoch in (1, 2):
        cached = MusicDataset(clips, sr, 4.0, train=True, seed=5, hop_length=hop, audio_channels=1, code_files=files)
        audio = MusicDataset(clips, sr, 4.0, train=True, seed=5, hop_length=hop, audio_channels=1)
        cached.set_epoch(epoch)
        audio.set_epoch(epoch)
        b_cached = collate([cached[i] for i in range(4)])
        b_audio = collate([audio[i] for i in range(4)])
        assert "codes" in b_cached and "audio" in b_audio and "codes" not in b_audio
        offsets += b_audio["frame_offset"].tolist()
        labels_c, labels_a = labels_for_batch(model, b_cached), labels_for_batch(model, b_audio)
        assert torch.equal(labels_c, labels_a)
        assert (labels_c != -100).any(dim=(1, 2)).all()
        with torch.no_grad():
            loss_c, tok_c = batch_loss(model, b_cached)
            loss_a, tok_a = batch_loss(model, b_audio)
        assert tok_c == tok_a and loss_c.item() == pytest.approx(loss_a.item(), abs=1e-6)
    assert len(set(offsets)) > 3  # real random crops, not all at the start


def test_long_clip_codes_are_the_same_cached_or_not_across_piece_boundaries(tiny_model_dir, example_data_dir,
                                                                             tmp_path):
    """A 70 s clip at 44.1 kHz is read and encoded in three ~30 s pieces: the code cache encodes all
    of them, uncached training only the pieces under its window. Windows across a piece boundary,
    inside one piece and in the short last piece give the same tokens either way."""
    model, processor = load_model_and_processor(str(tiny_model_dir))
    info = model_info(model)
    sr, hop = info["sample_rate"], info["hop_length"]
    parts = [sf.read(c.audio_path, dtype="float32")[0] for c in read_metadata(example_data_dir)["train"]]
    long = np.concatenate(parts * 4)[: 70 * sr]
    import librosa

    path = tmp_path / "long.wav"
    sf.write(path, librosa.resample(long, orig_sr=sr, target_sr=44100), 44100)
    clip = Clip(path, "lo-fi hip hop beat", "train")
    pieces = AudioPieces(path, sr, piece_samples(sr, hop))
    assert pieces.num_pieces == 3 and abs(pieces.num_samples - 70 * sr) <= 1
    entry = CodeCache(tmp_path / "cache", model, sr).fill([clip], progress=False)
    cached = MusicDataset([clip], sr, 4.0, train=True, hop_length=hop, audio_channels=1, code_files=entry)
    uncached = MusicDataset([clip], sr, 4.0, train=True, hop_length=hop, audio_channels=1)
    collate = Collator(processor, 4 * sr, hop)
    frames_per_piece = piece_samples(sr, hop) // hop
    for offset in (frames_per_piece - 100, 2 * frames_per_piece - 1, 40, 3400):
        a, b = collate([cached.item(0, offset)]), collate([uncached.item(0, offset)])
        assert b["audio"][0].shape[-1] <= 2 * piece_samples(sr, hop)  # never the whole clip in memory
        assert torch.equal(labels_for_batch(model, a), labels_for_batch(model, b)), offset
    whole_codes, n = load_codes(entry[0])
    assert n == pieces.num_samples and whole_codes.shape[1] == -(-n // hop)
    window, valid = crop_codes(whole_codes, n, 3400, 200, hop)
    assert valid == min(200, n // hop - 3400) and valid < 200  # the clip's end: masked past it


def _losses(run):
    recs = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [(r["type"], r["step"], r.get("train_loss", r.get("valid_loss"))) for r in recs]


@pytest.mark.slow
def test_pretokenize_then_train_from_cache_equals_training_without(tiny_model_dir, data_copy, tmp_path):
    proc = run_script("prepare_data.py", "--pretokenize", "--model_path", tiny_model_dir, "--data_dir", data_copy,
                      "--no_progress")
    assert "6 clips, 6 encoded, 0 already cached" in proc.stderr + proc.stdout
    assert "files/s" in proc.stderr + proc.stdout
    entries = sorted((data_copy / ".codes_cache").rglob("*.safetensors"))
    assert len(entries) == 6

    common = ["--model_path", tiny_model_dir, "--data_dir", data_copy, "--num_epochs", 1, "--batch_size", 2,
              "--gradient_accumulation_steps", 1, "--learning_rate", 3e-3, "--warmup_steps", 1, "--logging_steps", 1,
              "--target_duration", 4, "--no_progress", "--seed", 7]
    cached = run_script("train_lora.py", *common, "--output_dir", tmp_path / "cached")
    out = cached.stdout + cached.stderr
    assert "train 4 clips, 4 cached, 0 encoded" in out and "valid 2 clips, 2 cached, 0 encoded" in out
    uncached = run_script("train_lora.py", *common, "--output_dir", tmp_path / "uncached", "--no_cache")
    assert "code cache" not in uncached.stdout + uncached.stderr
    assert sorted((data_copy / ".codes_cache").rglob("*.safetensors")) == entries

    a, b = _losses(tmp_path / "cached"), _losses(tmp_path / "uncached")
    assert [x[:2] for x in a] == [x[:2] for x in b] and len([x for x in a if x[0] == "train"]) == 2
    for (_, _, la), (_, _, lb) in zip(a, b):
        assert la == pytest.approx(lb, abs=1e-5)
