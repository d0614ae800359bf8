"""Codes of a metadata.json folder go into the code store, found by content (data/store_update.py):
nothing is encoded twice, renames and metadata edits encode nothing, an edited or added clip is the
only one encoded, another codec's codes are never read, and training from the store sees the codes
and labels the audio route gives (what --no_cache trained on before it became a no-op).

The offline test codec is built with all-zero codebooks (a fresh EnCodec's buffers), so it emits
code 0 everywhere and any two code paths would agree. The tiny model's codebooks are drawn from its
own latents (what EnCodec's k-means init does), so codes are diverse and a wrong crop or a stale
row shows up as different tokens.
"""
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import musicgen_lora.data.store_update as store_update
from musicgen_lora.audio.codes import crop_codes
from musicgen_lora.audio.reader import AudioPieces, load_audio, piece_samples
from musicgen_lora.core.common import UserError
from musicgen_lora.data import code_store
from musicgen_lora.data.dataset import Collator, MusicDataset
from musicgen_lora.data.metadata import Clip, read_metadata
from musicgen_lora.data.store_update import fill_store
from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
from musicgen_lora.model.codec import encode_audio, encode_pieces
from musicgen_lora.model.loss import batch_loss, labels_for_batch

from conftest import run_script


@pytest.fixture
def data_copy(example_data_dir, tmp_path):
    """4 train + 2 valid example clips cut to 6 s (longer than the tests' 4 s window): quick to encode."""
    out = tmp_path / "data"
    shutil.copytree(example_data_dir, out, ignore=shutil.ignore_patterns(".codes_cache", "code_store"))
    meta = json.loads((out / "metadata.json").read_text())
    meta = {"train": meta["train"][:4], "valid": meta["valid"][:2]}
    for entry in meta["train"] + meta["valid"]:
        wav, sr = sf.read(out / entry["audio"], dtype="float32")
        sf.write(out / entry["audio"], wav[: 6 * sr], sr)
        entry["duration"] = 6.0
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


def _fill(model, clips, store_dir, melody=False, **kw):
    return fill_store(store_dir, model, {"train": clips}, melody, progress=False, **kw)


def _whole_codes(model, path):
    return encode_pieces(model, [torch.from_numpy(load_audio(path, 32000))])


def _unit_files(store_dir):
    return {p.relative_to(store_dir): p.stat().st_mtime_ns for p in code_store.units_dir(store_dir).rglob("*")
            if p.is_file()}


def test_codes_are_diverse_and_crop_of_codes_differs_from_codes_of_crop(tiny_model_dir, example_data_dir):
    """Why the store keeps whole clips and both paths crop codes: encoding an audio crop is not a
    crop of the clip's codes near the crop's edges (EnCodec's LSTM and non-causal convolutions)."""
    model, _ = load_model_and_processor(str(tiny_model_dir))
    clip = read_metadata(example_data_dir)["train"][0]
    wav = torch.from_numpy(load_audio(clip.audio_path, 32000))
    whole = encode_pieces(model, [wav])  # a clip under 30 s is one piece: the whole clip
    assert all(len(whole[k].unique()) > 8 for k in range(whole.shape[0]))
    o, w, hop = 50, 100, model_info(model)["hop_length"]
    crop_first = encode_audio(model, wav[o * hop:(o + w) * hop][None])[0]
    assert not torch.equal(crop_first, whole[:, o:o + w])


def test_store_hits_renames_edits_additions_and_codec_changes(tiny_model_dir, data_copy, caplog):
    model, _ = load_model_and_processor(str(tiny_model_dir))
    every = read_metadata(data_copy)["train"]
    clips, store_dir = every[:3], data_copy / "code_store"

    store, out, _, stats = _fill(model, clips, store_dir)
    assert stats["encoded"] == 3 and stats["cached"] == 0 and len({c.store_index for c in out["train"]}) == 3
    for clip, row in zip(clips, out["train"]):
        assert torch.equal(store.codes(row.store_index), _whole_codes(model, clip.audio_path))
        assert store.num_samples(row.store_index) == len(load_audio(clip.audio_path, 32000))
    files = _unit_files(store_dir)

    # A new run: nothing encoded, nothing rewritten.
    _, _, _, stats = _fill(model, clips, store_dir)
    assert stats["encoded"] == 0 and stats["cached"] == 3 and _unit_files(store_dir) == files

    # Renamed and moved, described otherwise, in the other split: found by content, nothing encoded.
    moved = data_copy / "elsewhere" / "renamed.wav"
    moved.parent.mkdir()
    os.rename(clips[0].audio_path, moved)
    clips[0] = Clip(moved, "another description", "valid")
    store, out, _, stats = _fill(model, clips, store_dir)
    assert stats["encoded"] == 0 and _unit_files(store_dir) == files
    assert torch.equal(store.codes(out["train"][0].store_index), _whole_codes(model, moved))

    # One clip's audio edited, another only touched: exactly the edited one is encoded.
    wav = load_audio(clips[1].audio_path, 32000)
    sf.write(clips[1].audio_path, wav[: 32000 * 5], 32000)
    clips[2].audio_path.touch()
    store, out, _, stats = _fill(model, clips, store_dir)
    assert stats["encoded"] == 1 and store.num_samples(out["train"][1].store_index) == 32000 * 5
    assert torch.equal(store.codes(out["train"][1].store_index), _whole_codes(model, clips[1].audio_path))

    # One clip added: that one is encoded (its bucket re-committed, the others untouched).
    before = set(code_store._unit_ids(store_dir))
    store, out, _, stats = _fill(model, clips + [every[3]], store_dir)
    assert stats["encoded"] == 1 and stats["units"] == 1
    assert len(set(code_store._unit_ids(store_dir)) - before) == 1  # one new unit (one bucket's next generation)
    assert torch.equal(store.codes(out["train"][3].store_index), _whole_codes(model, every[3].audio_path))

    # The decoder changed: the same codec, nothing encoded. The codec changed: everything encoded,
    # the old units skipped with one warning line and left in place.
    with torch.no_grad():
        model.decoder.lm_heads[0].weight.add_(1.0)
    assert _fill(model, clips, store_dir)[3]["encoded"] == 0
    with torch.no_grad():
        next(model.audio_encoder.encoder.parameters()).mul_(1.01)
    caplog.clear()
    store, out, _, stats = _fill(model, clips, store_dir)
    assert stats["encoded"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "written for other codes" in warnings[0] and "codec" in warnings[0]
    assert before <= set(code_store._unit_ids(store_dir))  # other codes are never deleted


def test_hash_memo_skips_rehashing_unchanged_files_and_catches_same_size_rewrites(tiny_model_dir, data_copy,
                                                                                 monkeypatch):
    """A second run reads no audio bytes to find its clips' rows; a rewrite that keeps the size and is
    given the old mtime back (rsync -t, cp -p) is still hashed again, through ctime."""
    import musicgen_lora.data.code_cache as code_cache

    model, _ = load_model_and_processor(str(tiny_model_dir))
    clips = read_metadata(data_copy)["train"][:3]
    store_dir = data_copy / "code_store"
    old = (1_600_000_000, 1_600_000_000)  # files written long before they are hashed: not "racy"
    for clip in clips:
        os.utime(clip.audio_path, old)
    hashed = []
    real = code_cache.file_sha256
    monkeypatch.setattr(code_cache, "file_sha256", lambda path, **kw: hashed.append(Path(path).name) or real(path))

    _, first, _, stats = _fill(model, clips, store_dir)
    assert len(hashed) == 3 and stats["hashed"] == 3 and (store_dir / code_cache.HASH_MEMO_NAME).is_file()

    hashed.clear()
    _, second, _, stats = _fill(model, clips, store_dir)
    assert hashed == [] and stats["encoded"] == 0 and stats["hashed"] == 0
    assert [c.store_index for c in second["train"]] == [c.store_index for c in first["train"]]

    wav, sr = sf.read(clips[1].audio_path, dtype="float32")
    size = clips[1].audio_path.stat().st_size
    sf.write(clips[1].audio_path, wav * 0.5, sr)
    os.utime(clips[1].audio_path, old)
    assert clips[1].audio_path.stat().st_size == size
    store, third, _, stats = _fill(model, clips, store_dir)
    assert hashed == [clips[1].audio_path.name] and stats["encoded"] == 1
    assert torch.equal(store.codes(third["train"][1].store_index), _whole_codes(model, clips[1].audio_path))

    # A file hashed right after it was written is "racy": trusted only once it is older than the margin.
    clips[2].audio_path.touch()
    hashed.clear()
    _fill(model, clips, store_dir)
    _fill(model, clips, store_dir)
    assert hashed == [clips[2].audio_path.name] * 2

    # A corrupt memo costs only the hashing.
    (store_dir / code_cache.HASH_MEMO_NAME).write_text("{not json")
    hashed.clear()
    _, _, _, stats = _fill(model, clips, store_dir)
    assert len(hashed) == 3 and stats["encoded"] == 0


def test_a_killed_fill_commits_nothing_half_written_and_the_next_run_finishes(tiny_model_dir, data_copy,
                                                                            monkeypatch):
    model, _ = load_model_and_processor(str(tiny_model_dir))
    clips = read_metadata(data_copy)["train"][:3]
    store_dir = data_copy / "code_store"
    real = store_update.encode_files

    def dies(*args, **kw):
        for n, out in enumerate(real(*args, **kw)):
            if n == 0 and len(args[1]) == 1 and not dies.spared:
                raise KeyboardInterrupt  # Ctrl-C inside the second bucket's encoding
            yield out
        dies.spared = False

    dies.spared = True
    monkeypatch.setattr(store_update, "encode_files", dies)
    with pytest.raises(KeyboardInterrupt):
        _fill(model, clips, store_dir)
    monkeypatch.setattr(store_update, "encode_files", real)
    names = os.listdir(code_store.units_dir(store_dir))
    assert len(names) == 1 and not names[0].startswith(".")  # the first bucket committed; no temp left
    store, out, _, stats = _fill(model, clips, store_dir)
    assert stats["encoded"] == 2 and not [n for n in os.listdir(code_store.units_dir(store_dir)) if n.startswith(".")]
    for clip, row in zip(clips, out["train"]):
        assert torch.equal(store.codes(row.store_index), _whole_codes(model, clip.audio_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_store_still_trains_and_asks_for_cache_dir_only_to_encode(tiny_model_dir, data_copy):
    model, _ = load_model_and_processor(str(tiny_model_dir))
    clips = read_metadata(data_copy)["train"][:3]
    store_dir = data_copy / "code_store"
    _fill(model, clips[:2], store_dir)
    folders = [store_dir, *(p for p in store_dir.rglob("*") if p.is_dir())]
    for d in folders:
        d.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        store, out, _, stats = _fill(model, clips[:2], store_dir)  # everything there: reads only
        assert stats["encoded"] == 0 and len(store) == 2
        with pytest.raises(UserError, match="cannot write the code store.*--cache_dir"):
            _fill(model, clips, store_dir)
    finally:
        for d in folders:
            d.chmod(stat.S_IRWXU)


def test_store_and_audio_batches_give_same_labels_and_loss(tiny_model_dir, data_copy):
    """Same seed and epoch -> same random crop -> identical labels and loss, from the store or from audio."""
    model, processor = load_model_and_processor(str(tiny_model_dir))
    info = model_info(model)
    sr, hop = info["sample_rate"], info["hop_length"]
    clips = read_metadata(data_copy)["train"][:4]
    store, out, _, _ = _fill(model, clips, data_copy / "code_store")
    collate = Collator(processor, 4 * sr, hop)
    offsets = []
    for epoch in (1, 2):
        cached = MusicDataset(out["train"], sr, 4.0, train=True, seed=5, hop_length=hop, audio_channels=1,
                              store=store)
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
    """A 70 s clip at 44.1 kHz is read and encoded in three ~30 s pieces: the store holds all
    of them, the audio route only the pieces under its window. Windows across a piece boundary,
    inside one piece and in the short last piece give the same tokens either way."""
    model, processor = load_model_and_processor(str(tiny_model_dir))
    info = model_info(model)
    sr, hop = info["sample_rate"], info["hop_length"]
    parts = [sf.read(c.audio_path, dtype="float32")[0] for c in read_metadata(example_data_dir)["train"]]
    long = np.concatenate(parts * 4)[: 70 * sr]
    from musicgen_lora.audio.librosa_import import load_librosa

    librosa = load_librosa()

    path = tmp_path / "long.wav"
    sf.write(path, librosa.resample(long, orig_sr=sr, target_sr=44100), 44100)
    clip = Clip(path, "lo-fi hip hop beat", "train")
    pieces = AudioPieces(path, sr, piece_samples(sr, hop))
    assert pieces.num_pieces == 3 and abs(pieces.num_samples - 70 * sr) <= 1
    store, out, _, _ = _fill(model, [clip], tmp_path / "store")
    cached = MusicDataset(out["train"], sr, 4.0, train=True, hop_length=hop, audio_channels=1, store=store)
    uncached = MusicDataset([clip], sr, 4.0, train=True, hop_length=hop, audio_channels=1)
    collate = Collator(processor, 4 * sr, hop)
    frames_per_piece = piece_samples(sr, hop) // hop
    for offset in (frames_per_piece - 100, 2 * frames_per_piece - 1, 40, 3400):
        a, b = collate([cached.item(0, offset)]), collate([uncached.item(0, offset)])
        assert b["audio"][0].shape[-1] <= 2 * piece_samples(sr, hop)  # never the whole clip in memory
        assert torch.equal(labels_for_batch(model, a), labels_for_batch(model, b)), offset
    whole_codes, n = store.codes(out["train"][0].store_index), store.num_samples(out["train"][0].store_index)
    assert n == pieces.num_samples and whole_codes.shape[1] == -(-n // hop)
    window, valid = crop_codes(whole_codes, n, 3400, 200, hop)
    assert valid == min(200, n // hop - 3400) and valid < 200  # the clip's end: masked past it


def _losses(run):
    recs = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
    return [(r["type"], r["step"], r.get("train_loss", r.get("valid_loss"))) for r in recs]


@pytest.mark.slow
def test_pretokenize_then_train_encodes_nothing_and_no_cache_is_a_no_op(tiny_model_dir, data_copy, tmp_path):
    proc = run_script("prepare_data.py", "--pretokenize", "--model_path", tiny_model_dir, "--data_dir", data_copy,
                      "--no_progress")
    assert "6 clips, 0 in the store, 6 encoded" in proc.stderr + proc.stdout
    assert "files/s" in proc.stderr + proc.stdout
    files = _unit_files(data_copy / "code_store")
    assert files and not (data_copy / ".codes_cache").exists()

    common = ["--model_path", tiny_model_dir, "--data_dir", data_copy, "--num_epochs", 1, "--batch_size", 2,
              "--gradient_accumulation_steps", 1, "--learning_rate", 3e-3, "--warmup_steps", 1, "--logging_steps", 1,
              "--target_duration", 4, "--no_progress", "--seed", 7]
    first = run_script("train_lora.py", *common, "--output_dir", tmp_path / "a")
    assert "6 clips, 6 in the store, 0 encoded" in first.stdout + first.stderr
    old = run_script("train_lora.py", *common, "--output_dir", tmp_path / "b", "--no_cache")
    assert "--no_cache no longer changes anything" in old.stdout + old.stderr
    assert _unit_files(data_copy / "code_store") == files

    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [x[:2] for x in a] == [x[:2] for x in b] and len([x for x in a if x[0] == "train"]) == 2
    for (_, _, la), (_, _, lb) in zip(a, b):
        assert la == pytest.approx(lb, abs=1e-5)


def _fill_in_child(model_dir, clip_paths, store_dir):
    import torch as _torch

    _torch.set_num_threads(1)
    model, _ = load_model_and_processor(str(model_dir))
    clips = [Clip(Path(p), "x", "train") for p in clip_paths]
    fill_store(store_dir, model, {"train": clips}, False, progress=False)


@pytest.mark.slow
def test_two_processes_filling_one_store_at_once_agree(tiny_model_dir, data_copy):
    """Two runs on one data folder at once: each bucket is committed by one of them (the other's
    rename is refused and it reads the store again), and the store holds each clip once, right."""
    import multiprocessing

    clips = read_metadata(data_copy)["train"]
    store_dir = data_copy / "code_store"
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_fill_in_child, args=(tiny_model_dir, [str(c.audio_path) for c in clips], store_dir))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    model, _ = load_model_and_processor(str(tiny_model_dir))
    store, out, _, stats = _fill(model, clips, store_dir)
    assert stats["encoded"] == 0 and len(store) == len(clips)
    assert not [n for n in os.listdir(code_store.units_dir(store_dir)) if n.startswith(".")]
    for clip, row in zip(clips, out["train"]):
        assert torch.equal(store.codes(row.store_index), _whole_codes(model, clip.audio_path))


def _clip_in_bucket(clips, buckets, folder, known):
    """A new clip (a copy of the first with one sample changed; its content not in `known`) whose
    content falls in one of `buckets`."""
    import dataclasses
    import hashlib

    x, sr = sf.read(clips[0].audio_path, dtype="float32")
    for k in range(1, 20000):
        path = folder / f"extra_{k}.wav"
        y = x.copy()
        y[0] = k * 1e-4
        sf.write(path, y, sr)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if store_update.bucket_of(digest) in buckets and digest not in known:
            return dataclasses.replace(clips[0], audio_path=path)
        path.unlink()
    raise AssertionError("no clip found for those buckets")


def test_a_run_reading_the_store_keeps_the_units_another_run_replaces(tiny_model_dir, data_copy):
    """Run A trains from the store; run B adds a clip to one of its buckets. A must still read every
    row: B's new generation supersedes the old unit, which stays while A has the store open (before,
    B removed it at once and A's next open of that codes.bin -- a new DataLoader worker -- raised
    FileNotFoundError). Once A lets go, the next update removes it, and readers never see both."""
    model, _ = load_model_and_processor(str(tiny_model_dir))
    clips = read_metadata(data_copy)["train"]
    store_dir = data_copy / "code_store"
    reader, *_ = _fill(model, clips, store_dir)  # run A's open store, no codes.bin opened yet
    extra = _clip_in_bucket(clips, {u.split("-")[1] for u in reader.units}, data_copy, reader.content_rows())
    _fill(model, clips + [extra], store_dir)[0].release()  # run B
    replaced = code_store.superseded_units(store_dir)
    assert len(replaced) == 1 and replaced <= set(reader.units)  # B made a new generation of A's bucket
    for i in range(len(reader)):  # A reads every row, the replaced unit's included
        assert reader.codes(i).shape[0] == model_info(model)["num_codebooks"]
    fresh = code_store.CodeStore(store_dir, code_store.StoreKey.for_model(model))
    assert not set(fresh.units) & replaced and len(fresh) == len(clips) + 1  # a new reader sees one generation
    fresh.release()
    reader.release()
    store, out, _, stats = _fill(model, clips + [extra], store_dir)  # the next update, nobody reading
    assert stats["encoded"] == 0 and not code_store.superseded_units(store_dir)
    assert not set(code_store._unit_ids(store_dir)) & replaced
    assert torch.equal(store.codes(out["train"][-1].store_index), _whole_codes(model, extra.audio_path))
