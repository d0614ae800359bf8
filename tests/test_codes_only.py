"""prepare_data.py --codes_only: zip batches (and folders) straight to the code store, one unit per
zip, resumable and incremental; the codes equal the WAV route's through the per-clip cache."""
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_lora.data import code_store
from musicgen_lora.data.store_update import fill_store
from musicgen_lora.model.checkpoint import load_model_and_processor

from conftest import LORA, run_script

SR = 32000


def _wav_bytes(seconds, freq, seed, sr=SR):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV")
    return buf.getvalue()


def make_batch(path, number, tracks=3, seconds=31.0):
    """archive_batch_NNNN.zip: tracks under nested folders, a member that is not audio, a corrupt one."""
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(tracks):
            zf.writestr(f"batch_{number:04d}/audio/set{i % 2}/track{number}_{i}.wav",
                        _wav_bytes(seconds, 180 + 40 * i + 7 * number, seed=number * 10 + i))
        zf.writestr(f"batch_{number:04d}/audio/broken.wav", b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
        zf.writestr(f"batch_{number:04d}/readme.txt", "not audio")
    return [{"path": f"audio/set{i % 2}/track{number}_{i}.wav", "duration": seconds, "sample_rate": SR,
             "description": f"tone {number}.{i}"} for i in range(tracks)] + \
           [{"path": f"batch_{number:04d}/audio/broken.wav", "duration": 1.0, "sample_rate": SR, "description": "x"}]


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    rows = []
    for n in (1, 2, 3):
        rows += make_batch(root / f"archive_batch_{n:04d}.zip", n)
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def prepare(model, batches, out, numbers, *extra, check=True, **kw):
    zips = [batches / f"archive_batch_{n:04d}.zip" for n in numbers]
    return run_script("prepare_data.py", "--input_zip", *zips, "--output_dir", out, "--model_path", model,
                      "--codes_only", "--valid_ratio", 0.3, "--seed", 3, "--no_progress", *extra, check=check, **kw)


def name_of(unit_id):
    """archive_batch_0001-3f9c0a1b2d -> archive_batch_0001 (units.unit_id: the source's name + a hash)."""
    return unit_id.rsplit("-", 1)[0]


def units_created(out):
    """{unit name: created time + index checksum} of the committed units."""
    return {name_of(u): info["created"] + info["checksum"]["index_sha256"]
            for u, info in code_store.committed_units(code_store.default_store_dir(out)).items()}


def unit_named(out, name):
    """unit.json of the one committed unit made from `name` (a zip's stem)."""
    found = [info for u, info in code_store.committed_units(code_store.default_store_dir(out)).items()
             if name_of(u) == name]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_zips_to_codes_skip_what_is_committed_and_add_only_the_new_zip(tiny_model_dir, batches, tmp_path):
    out = tmp_path / "data"
    first = prepare(tiny_model_dir, batches, out, (1, 2))
    assert "2 to encode" in first.stderr and not (out / "train").exists() and not (out / "metadata.json").exists()
    before = units_created(out)
    assert sorted(before) == ["archive_batch_0001", "archive_batch_0002"]
    # A second run with one more zip encodes that zip only; the committed units are not touched.
    second = prepare(tiny_model_dir, batches, out, (1, 2, 3))
    assert "2 already committed (skipped), 1 to encode" in second.stderr
    after = units_created(out)
    assert {u: after[u] for u in before} == before and "archive_batch_0003" in after

    key = code_store.StoreKey.for_model(load_model_and_processor(str(tiny_model_dir), device="cpu")[0])
    store = code_store.CodeStore(code_store.default_store_dir(out), key)
    # 3 zips x 3 tracks x two 15 s segments (the 1 s tail is dropped); corrupt and non-audio members skipped.
    assert len(store) == 18 and not store.skipped
    infos = [store.clip_info(i) for i in range(len(store))]
    assert {i["description"] for i in infos} == {f"tone {n}.{i}" for n in (1, 2, 3) for i in range(3)}
    assert all(i["duration"] == 15.0 for i in infos)
    # Whole tracks on one side; validation segments kept as audio inside their unit.
    by_track = {}
    for i in infos:
        by_track.setdefault(i["source"], set()).add(i["split"])
    assert all(len(s) == 1 for s in by_track.values())
    valid = [i for i in infos if i["split"] == "valid"]  # seed 3: tracks 2_0 and 3_2 (a hashed split)
    assert sorted({i["source"].rsplit("/", 1)[1] for i in valid}) == ["track2_0.wav", "track3_2.wav"]
    assert all("audio" in i for i in valid) and all("audio" not in i for i in infos if i["split"] == "train")
    notes = unit_named(out, "archive_batch_0001")["notes"]["report"]
    assert [(r["source"], r["kind"]) for r in notes["skipped"]] == [
        ("archive_batch_0001.zip:batch_0001/audio/broken.wav", "unreadable")]
    assert notes["no_description"] == []


def test_store_codes_equal_the_wav_route_through_the_store(tiny_model_dir, batches, tmp_path):
    """The same zip both ways: the WAV route's segments, encoded into the store by train_lora.py's
    fill, give exactly the codes --codes_only stored (same decoding, resampling, 16-bit rounding, cutting)."""
    codes_out, wav_out = tmp_path / "codes", tmp_path / "wavs"
    prepare(tiny_model_dir, batches, codes_out, (2,), "--valid_ratio", 0)
    run_script("prepare_data.py", "--input_zip", batches / "archive_batch_0002.zip", "--output_dir", wav_out,
               "--valid_ratio", 0, "--no_progress")
    model = load_model_and_processor(str(tiny_model_dir), device="cpu")[0]
    store = code_store.CodeStore(code_store.default_store_dir(codes_out), code_store.StoreKey.for_model(model))
    from musicgen_lora.data.metadata import read_metadata

    wav_clips = read_metadata(wav_out)["train"]
    wav_store, filled, _, _ = fill_store(tmp_path / "store", model, {"train": wav_clips}, False, progress=False)
    meta = json.loads((wav_out / "metadata.json").read_text())["train"]
    assert len(meta) == len(store) == 6
    by_start = {(i["source"], i["start"]): n for n, i in enumerate(store.clip_info(k) for k in range(len(store)))}
    for entry, clip in zip(meta, filled["train"]):
        n = by_start[(entry["source"], entry["start"])]
        assert torch.equal(store.codes(n), wav_store.codes(clip.store_index))
        assert store.num_samples(n) == wav_store.num_samples(clip.store_index)


@pytest.mark.slow
def test_a_killed_preparation_resumes_without_re_encoding_committed_units(tiny_model_dir, batches, tmp_path):
    out = tmp_path / "data"
    zips = [batches / f"archive_batch_{n:04d}.zip" for n in (1, 2, 3)]
    proc = subprocess.Popen([sys.executable, str(LORA / "prepare_data.py"), "--input_zip", *map(str, zips),
                             "--output_dir", str(out), "--model_path", str(tiny_model_dir), "--codes_only",
                             "--no_progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    units = code_store.units_dir(code_store.default_store_dir(out))
    deadline = time.time() + 300
    while (not any(name_of(u.name) == "archive_batch_0001" for u in units.glob("a*")) and time.time() < deadline
           and proc.poll() is None):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = units_created(out)
    assert "archive_batch_0001" in committed and len(committed) < 3, committed
    again = prepare(tiny_model_dir, batches, out, (1, 2, 3), "--valid_ratio", 0.1, "--seed", 0)
    assert f"{len(committed)} already committed (skipped), {3 - len(committed)} to encode" in again.stderr
    after = units_created(out)
    assert {u: after[u] for u in committed} == committed and len(after) == 3
    assert not [p for p in units.iterdir() if p.name.startswith(".")]  # the killed writer's temp: swept


def test_a_zip_member_over_the_limits_is_refused_and_reported(tiny_model_dir, tmp_path):
    big = tmp_path / "archive_batch_0009.zip"
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("audio/ok.wav", _wav_bytes(16, 300, 1))
        zf.writestr("audio/huge.wav", b"RIFF" + bytes(3 * 2**20))  # 3 MB of zeros: over --max_member_mb 2
    out = tmp_path / "data"
    run_script("prepare_data.py", "--input_zip", big, "--output_dir", out, "--model_path", tiny_model_dir,
               "--codes_only", "--max_member_mb", 2, "--default_description", "tone", "--no_progress")
    report = unit_named(out, "archive_batch_0009")["notes"]["report"]
    assert [(r["source"], r["kind"]) for r in report["skipped"]] == [("archive_batch_0009.zip:audio/huge.wav",
                                                                      "too large")]
    assert report["segments"] == {"train": 1, "valid": 0}


def test_codes_only_rows_record_their_content(tiny_model_dir, batches, tmp_path):
    """A kept validation segment's row is found by the sha256 of its kept WAV, like a metadata clip's."""
    from musicgen_lora.data.code_cache import file_sha256

    out = tmp_path / "codes"
    prepare(tiny_model_dir, batches, out, (1,), "--valid_ratio", 0.5)
    model = load_model_and_processor(str(tiny_model_dir), device="cpu")[0]
    store = code_store.CodeStore(code_store.default_store_dir(out), code_store.StoreKey.for_model(model))
    rows = store.content_rows()
    assert len(rows) == len(store)  # every segment has its own content key
    kept = [i for i in range(len(store)) if store.clip_info(i).get("audio")]
    assert kept
    for i in kept:
        info = store.clip_info(i)
        assert rows[file_sha256(code_store.units_dir(code_store.default_store_dir(out)) / info["unit"] /
                                info["audio"])] == i


@pytest.mark.parametrize("extra,needle", [((), "--model_path"), (("--pretokenize",), "--pretokenize")])
def test_codes_only_flag_mistakes_are_one_line(tiny_model_dir, batches, tmp_path, extra, needle):
    args = ["--input_zip", batches / "archive_batch_0001.zip", "--output_dir", tmp_path / "d", "--codes_only", *extra]
    if needle != "--model_path":
        args += ["--model_path", tiny_model_dir]
    proc = run_script("prepare_data.py", *args, check=False)
    assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "d" / "code_store")


@pytest.mark.slow
def test_training_windows_from_the_store_equal_the_wav_route_and_train_lora_runs_on_it(tiny_model_dir, batches,
                                                                                        tmp_path):
    """MusicDataset over the --codes_only store gives the same window codes as over the WAV route's
    clips filled into a store; train_lora.py --data_dir on a --codes_only folder trains, validating on
    --max_valid_clips."""
    from musicgen_lora.data.dataset import MusicDataset
    from musicgen_lora.data.metadata import read_metadata

    codes_out, wav_out = tmp_path / "codes", tmp_path / "wavs"
    prepare(tiny_model_dir, batches, codes_out, (1, 2), "--valid_ratio", 0)
    run_script("prepare_data.py", "--input_zip", batches / "archive_batch_0001.zip", batches / "archive_batch_0002.zip",
               "--output_dir", wav_out, "--valid_ratio", 0, "--no_progress")
    model = load_model_and_processor(str(tiny_model_dir), device="cpu")[0]
    store, store_clips = code_store.store_splits(codes_out)
    wav_clips = read_metadata(wav_out)["train"]
    wav_store, filled, _, _ = fill_store(tmp_path / "store", model, {"train": wav_clips}, False, progress=False)
    layout = {"hop_length": 640, "audio_channels": 1}
    from_store = MusicDataset(store_clips["train"], SR, 10.0, train=True, seed=5, store=store, **layout)
    from_cache = MusicDataset(filled["train"], SR, 10.0, train=True, seed=5, store=wav_store, **layout)
    infos = [store.clip_info(c.store_index) for c in store_clips["train"]]
    match = {(i["source"], i["start"]): n for n, i in enumerate(infos)}
    meta = json.loads((wav_out / "metadata.json").read_text())["train"]
    assert len(meta) == len(from_store) == 12
    for k, entry in enumerate(meta):
        n = match[(entry["source"], entry["start"])]
        for offset in (0, 137, 300):  # 15 s clips, 10 s windows: the last offset reaches the end
            a, b = from_store.item(n, frame_offset=offset), from_cache.item(k, frame_offset=offset)
            assert torch.equal(a["codes"], b["codes"]) and a["num_frames"] == b["num_frames"]
            assert a["description"] == b["description"]

    run = tmp_path / "run"
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", codes_out, "--output_dir", run,
                      "--num_epochs", 1, "--batch_size", 4, "--gradient_accumulation_steps", 1, "--max_valid_clips", 2,
                      "--target_duration", 5, "--no_progress")
    assert "code store" in proc.stderr and "12 train + 0 valid clips" in proc.stderr
    config = json.loads((run / "run_config.json").read_text())
    # No valid split: one of the 6 source tracks (2 segments) held out of training (data.splits.hold_out_tracks).
    assert "held out 1 of 6 source tracks (2 clips" in proc.stderr and config["validation"] == "held out"
    assert config["train_clips"] == 10 and config["valid_clips"] == 2 and config["max_valid_clips"] == 2
    assert (run / "final_model" / "adapter_model.safetensors").is_file()


def test_max_valid_clips_takes_evenly_spaced_clips_the_same_every_time():
    from musicgen_lora.data.metadata import validation_clips

    splits = {"train": list(range(100)), "valid": list(range(1000, 1050))}
    assert validation_clips(splits, 5) == [1000, 1010, 1020, 1030, 1040]
    assert validation_clips(splits, 500) == splits["valid"] and validation_clips(splits) == splits["valid"]
    assert validation_clips({"train": list(range(100)), "valid": []}, 3) == [0, 3, 6]  # of the first tenth


@pytest.mark.slow
def test_evaluate_a_run_trained_from_the_store_on_its_kept_validation_audio(tiny_model_dir, batches, tmp_path):
    """evaluate.py finds the run's --codes_only data and its kept validation audio: the base model's
    held-out loss equals the trainer's step-0 loss on the same (--max_valid_clips) clips."""
    data, run = tmp_path / "data", tmp_path / "run"
    prepare(tiny_model_dir, batches, data, (1, 2, 3))  # seed 3: two validation tracks, four segments
    run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", data, "--output_dir", run,
               "--num_epochs", 1, "--batch_size", 4, "--gradient_accumulation_steps", 1, "--max_valid_clips", 3,
               "--target_duration", 5, "--no_progress")
    step0 = json.loads((run / "logs" / "summary.json").read_text())["base_valid_loss"]
    proc = run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--lora_model_path", run / "best_model",
                      "--compare", "--test_prompts", "a tone", "--duration", 1, "--output_dir", run / "evaluation",
                      "--no_progress")
    assert "held-out loss and FAD on the run's validation set" in proc.stderr
    summary = json.loads((run / "evaluation" / "summary.json").read_text())
    assert summary["models"]["base_model"]["held_out_loss"] == pytest.approx(step0, abs=1e-4)


def store_contents(out):
    """{unit: (clips.jsonl text, codes.bin bytes, index.npy bytes)}: what a store holds, not when."""
    units = code_store.units_dir(code_store.default_store_dir(out))
    return {u.name: tuple((u / f).read_bytes() for f in ("clips.jsonl", "codes.bin", "index.npy"))
            for u in sorted(units.iterdir()) if not u.name.startswith(".")}


@pytest.mark.slow
def test_two_processes_on_disjoint_units_build_the_store_one_process_builds(tiny_model_dir, batches, tmp_path):
    """RANK/WORLD_SIZE (what accelerate launch and torchrun set): each process takes every second
    unit and writes only its own; together they write exactly what one process writes."""
    zips = [str(batches / f"archive_batch_{n:04d}.zip") for n in (1, 2, 3)]
    args = ["--input_zip", *zips, "--model_path", str(tiny_model_dir), "--codes_only", "--no_progress"]
    procs = [subprocess.Popen([sys.executable, str(LORA / "prepare_data.py"), *args, "--output_dir",
                               str(tmp_path / "two")], env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    logs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert "process 0 of 2 has 2" in logs[0][1] and "process 1 of 2 has 1" in logs[1][1]
    run_script("prepare_data.py", *args, "--output_dir", tmp_path / "one")
    two, one = store_contents(tmp_path / "two"), store_contents(tmp_path / "one")
    assert list(map(name_of, two)) == ["archive_batch_0001", "archive_batch_0002", "archive_batch_0003"] and two == one


def test_a_0_hz_member_is_skipped_and_the_unit_still_commits(tiny_model_dir, tmp_path):
    """A 0 Hz header used to end every run at this member with a ZeroDivisionError, the unit discarded."""
    import struct

    bad = bytearray(_wav_bytes(16, 250, 2))
    bad[24:28], bad[28:32] = struct.pack("<I", 0), struct.pack("<I", 0)
    batch = tmp_path / "archive_batch_0007.zip"
    with zipfile.ZipFile(batch, "w") as zf:
        zf.writestr("audio/a_good.wav", _wav_bytes(16, 300, 1))
        zf.writestr("audio/b_zero_hz.wav", bytes(bad))
        zf.writestr("audio/c_good.wav", _wav_bytes(16, 350, 3))
    out = tmp_path / "data"
    proc = run_script("prepare_data.py", "--input_zip", batch, "--output_dir", out, "--model_path", tiny_model_dir,
                      "--codes_only", "--default_description", "tone", "--valid_ratio", 0, "--no_progress",
                      check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = unit_named(out, "archive_batch_0007")["notes"]["report"]
    assert [(r["source"], r["kind"]) for r in report["skipped"]] == [("archive_batch_0007.zip:audio/b_zero_hz.wav",
                                                                      "unreadable")]
    assert "0 Hz" in report["skipped"][0]["reason"]
    assert report["segments"] == {"train": 2, "valid": 0}


def test_as_pcm16_is_libsndfiles_16_bit_round_trip_bit_for_bit_without_calling_soundfile(monkeypatch):
    """The codes route's 16-bit rounding equals soundfile's write (PCM_16) + read (float32) on every 16-bit
    boundary and its neighbours, +-1, tiny values and random ones -- computed in numpy, so no Python
    callback runs inside libsndfile (where a SIGINT was swallowed)."""
    from musicgen_lora.data.store_preparation import as_pcm16

    def round_trip(w):
        buf = io.BytesIO()
        sf.write(buf, w, SR, subtype="PCM_16", format="WAV")
        buf.seek(0)
        return sf.read(buf, dtype="float32")[0]

    rng = np.random.default_rng(0)
    k = np.arange(-32768, 32768, dtype=np.float32)
    f32 = np.float32
    vals = [rng.uniform(-1, 1, 500_000), rng.standard_normal(200_000) * 1e-4,
            rng.integers(-2**24, 2**24, 200_000) * 2.0**-32,  # the 2^-31 grid libsndfile rounds on
            [1, -1, 0, -0.0, np.nextafter(f32(1), f32(0)), np.nextafter(f32(-1), f32(0)), 1e-45, -1e-45, 1e-30,
             -1e-30, 2**-31, -2**-31, 2**-32, -2**-32, 3 * 2**-32, -3 * 2**-32]]
    for offset in (0, 0.25, 0.5, 0.75):
        b = ((k + offset) / 32768).astype(np.float32)
        vals += [b, np.nextafter(b, f32(-2)), np.nextafter(b, f32(2))]
    wav = np.clip(np.concatenate([np.asarray(v, dtype=np.float32) for v in vals]), -1, 1).astype(np.float32)
    expected_mono, expected_stereo = round_trip(wav), round_trip(wav.reshape(-1, 2))

    def no_soundfile(*a, **k):
        raise AssertionError("as_pcm16 must not go through soundfile")

    monkeypatch.setattr(sf, "write", no_soundfile)
    monkeypatch.setattr(sf, "read", no_soundfile)
    got_mono, got_stereo = as_pcm16(wav), as_pcm16(wav.reshape(-1, 2))
    assert got_mono.dtype == np.float32 and np.array_equal(got_mono, expected_mono)
    assert np.array_equal(got_stereo, expected_stereo)


@pytest.mark.parametrize("channels", [1, 2])
def test_segment_wav_bytes_are_soundfiles_file_byte_for_byte(channels):
    """segment_digest hashes the kept WAV's bytes without going through soundfile (see as_pcm16)."""
    from musicgen_lora.data.store_preparation import as_pcm16, pcm16_wav_bytes

    rng = np.random.default_rng(channels)
    audio = as_pcm16(np.clip(rng.standard_normal((3001, channels)) * 0.4, -1, 1).astype(np.float32))
    audio = audio.reshape(3001, channels).T
    buf = io.BytesIO()
    sf.write(buf, audio.T, SR, subtype="PCM_16", format="WAV")
    assert pcm16_wav_bytes(audio, SR) == buf.getvalue()
