"""prepare_data.py on a real mixed folder: formats, rates, segments, silence, descriptions, split, report."""
import json
import zipfile

import numpy as np
import pytest
import soundfile as sf

from musicgen_lora.core.outputs import MANIFEST
from musicgen_lora.data.config import PrepareConfig
from musicgen_lora.data.preparation import output_stem, prepare_collection

from conftest import run_script

SR_OUT = 32000


def _music(seconds, sr, channels=1, seed=0, freq=220.0):
    """A few seconds of a loud-enough chord with a little noise (never near-silent)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * freq * r * t) for r in (1, 1.25, 1.5)) / 3 * 0.4 + rng.standard_normal(len(t)) * 0.02
    x = x.astype(np.float32)
    return np.stack([x, 0.8 * x], axis=1) if channels == 2 else x


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A folder like a real one: mixed formats and rates, a long track, a corrupt, an empty and a silent file."""
    root = tmp_path_factory.mktemp("raw")
    (root / "a").mkdir()
    (root / "b" / "deep").mkdir(parents=True)
    (root / "long").mkdir()
    (root / "bad").mkdir()
    sf.write(root / "a" / "stereo44k.wav", _music(20, 44100, channels=2, seed=1), 44100)  # 1 segment + 5 s tail
    (root / "a" / "stereo44k.txt").write_text("warm lo-fi chords\n")
    sf.write(root / "b" / "deep" / "track.flac", _music(13, 48000, seed=2), 48000)       # 13 s >= 12 s: kept
    long = _music(50, 22050, seed=3, freq=330)
    long[15 * 22050:30 * 22050] = 0.0                                                    # a silent middle minute
    sf.write(root / "long" / "long_track.wav", long, 22050)                              # 3 full pieces, 5 s tail
    (root / "long" / "long_track.txt").write_text("slow ambient pad")
    sf.write(root / "song.mp3", _music(12.5, 32000, seed=4), 32000, format="MP3")
    (root / "bad" / "corrupt.wav").write_bytes(b"RIFF\x00\x10\x00\x00WAVEfmt " + bytes(range(256)) * 8)
    (root / "bad" / "empty.flac").write_bytes(b"")
    sf.write(root / "silent.wav", np.zeros(16 * 16000, dtype=np.float32), 16000)
    sf.write(root / "nodesc.ogg", _music(14, 32000, seed=5), 32000, format="OGG")
    (root / "notes.txt").write_text("not audio")
    descriptions = root.parent / f"{root.name}-descriptions.jsonl"
    rows = [{"path": "b/deep/track.flac", "duration": 13.0, "sample_rate": 48000, "description": "bright techno loop"},
            {"path": "song.mp3", "duration": 12.5, "sample_rate": 32000, "description": "solo piano, high register"},
            {"path": "bad/corrupt.wav", "duration": 1.0, "sample_rate": 32000, "description": "broken"},
            {"path": "bad/empty.flac", "duration": 0.0, "sample_rate": 32000, "description": "empty"},
            {"path": "silent.wav", "duration": 16.0, "sample_rate": 16000, "description": "nothing"},
            # a sidecar wins over the descriptions file
            {"path": "a/stereo44k.wav", "duration": 20.0, "sample_rate": 44100, "description": "LOSES to sidecar"}]
    descriptions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, descriptions


def _prepare(out, root, descriptions, *extra, check=True):
    return run_script("prepare_data.py", "--input_dir", root, "--descriptions_file", descriptions, "--output_dir", out,
                      "--valid_ratio", 0.3, "--seed", 3, "--no_progress", *extra, check=check)


def test_mixed_folder_gives_expected_segments_split_and_report(collection, tmp_path):
    root, descriptions = collection
    out = tmp_path / "data"
    proc = _prepare(out, root, descriptions)
    meta = json.loads((out / "metadata.json").read_text())
    report = json.loads((out / "prepare_report.json").read_text())
    entries = meta["train"] + meta["valid"]

    by_source = {}
    for e in entries:
        by_source.setdefault(e["source"], []).append(e)
        info = sf.info(str(out / e["audio"]))
        # stereo sources stay stereo (a stereo checkpoint trains on both channels; a mono one mixes them)
        assert info.samplerate == SR_OUT and info.channels == (2 if e["source"] == "a/stereo44k.wav" else 1)
        assert abs(info.duration - e["duration"]) < 1e-3
        assert e["audio"].startswith(("train/", "valid/"))
    # 20 s -> one 15 s segment (5 s tail < 0.8 x 15 dropped); 13 s and ~12.5 s -> one shorter segment each;
    # 50 s -> pieces at 0, 15, 30 (tail dropped), the silent one at 15 s dropped.
    assert sorted(by_source) == ["a/stereo44k.wav", "b/deep/track.flac", "long/long_track.wav", "song.mp3"]
    assert [e["duration"] for e in by_source["a/stereo44k.wav"]] == [15.0]
    assert [e["duration"] for e in by_source["b/deep/track.flac"]] == [13.0]
    assert 12.4 < by_source["song.mp3"][0]["duration"] < 12.7  # mp3 encoder delay may add a few ms
    assert sorted(e["start"] for e in by_source["long/long_track.wav"]) == [0.0, 30.0]
    assert report["segments"] == {"written": 5, "dropped_near_silent": 2, "dropped_short_tail": 3}
    assert report["channels"] == {"mono": 3, "stereo": 1}
    assert "(from 1 stereo source, kept stereo)" in proc.stderr + proc.stdout

    # Descriptions: sidecar first, then the JSONL; the file with neither is left out and reported.
    assert by_source["a/stereo44k.wav"][0]["description"] == "warm lo-fi chords"
    assert by_source["long/long_track.wav"][0]["description"] == "slow ambient pad"
    assert by_source["b/deep/track.flac"][0]["description"] == "bright techno loop"
    assert report["no_description"] == ["nodesc.ogg"]
    assert report["descriptions"] == {"sidecar": 2, "descriptions_file": 5, "metadata_jsonl": 0, "default": 0,
                                      "missing": 1}

    # No leakage: every source lies on one side only; valid holds about 30% of segments.
    train_src = {e["source"] for e in meta["train"]}
    valid_src = {e["source"] for e in meta["valid"]}
    assert train_src and valid_src and not train_src & valid_src
    assert 1 <= len(meta["valid"]) <= 2

    # The corrupt, empty, silent and undescribed files are named with reasons; the run still finished.
    reasons = {r["source"]: r["reason"] for r in report["skipped"]}
    assert set(reasons) == {"bad/corrupt.wav", "bad/empty.flac", "silent.wav", "nodesc.ogg"}
    assert "cannot decode" in reasons["bad/corrupt.wav"]
    assert "empty" in reasons["bad/empty.flac"]
    assert "near-silent" in reasons["silent.wav"]
    assert "no description" in reasons["nodesc.ogg"]
    # The counts add up: found = used + skipped, and skipped = the sum of its kinds.
    assert report["files_found"] == 8 and report["files_used"] == 4 and report["files_skipped"] == 4
    assert report["skipped_by_kind"] == {"unreadable": 2, "near-silent": 1, "no description": 1}
    out_text = proc.stdout + proc.stderr
    assert ("files: 8 found = 4 used + 4 skipped (2 unreadable, 1 near-silent, 1 without a description)"
            in out_text) and "bad/corrupt.wav" in out_text
    assert "descriptions: 7/8 files" in out_text and "nodesc.ogg" in out_text
    assert "{" not in out_text and "1 tracks" not in out_text and "1 segments" not in out_text

    # The result trains: read_metadata accepts it.
    from musicgen_lora.data.metadata import read_metadata

    splits = read_metadata(out)
    assert len(splits["train"]) + len(splits["valid"]) == 5


def test_rerun_is_identical_and_existing_output_is_protected(collection, tmp_path):
    root, descriptions = collection
    a, b = tmp_path / "a", tmp_path / "b"
    _prepare(a, root, descriptions)
    _prepare(b, root, descriptions)
    # The data is byte-identical (the manifest, bookkeeping of who wrote it, carries a run id and time).
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)

    before = (a / "metadata.json").read_bytes()
    proc = _prepare(a, root, descriptions, "--seed", 4, check=False)
    assert proc.returncode == 2 and "already exists (4 of 4 outputs would be replaced)" in proc.stderr
    assert "pass --overwrite" in proc.stderr
    assert (a / "metadata.json").read_bytes() == before
    _prepare(a, root, descriptions, "--overwrite")
    assert (a / "metadata.json").read_bytes() == before
    assert not [p for p in a.iterdir() if ".tmp-" in p.name]


def test_require_description_stops_before_writing(collection, tmp_path):
    root, descriptions = collection
    out = tmp_path / "data"
    proc = _prepare(out, root, descriptions, "--require_description", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "nodesc.ogg" in proc.stderr and "no description" in proc.stderr
    assert not (out / "metadata.json").exists()
    # a default description covers it
    _prepare(out, root, descriptions, "--require_description", "--default_description", "instrumental music")
    meta = json.loads((out / "metadata.json").read_text())
    entries = [e for s in meta.values() for e in s if e["source"] == "nodesc.ogg"]
    assert len(entries) == 1 and entries[0]["description"] == "instrumental music"


def test_zip_batches_and_csv_descriptions(collection, tmp_path):
    root, _ = collection
    zips = []
    for i, sub in enumerate(["a", "long"]):
        z = tmp_path / f"archive_batch_{i:03d}.zip"
        with zipfile.ZipFile(z, "w") as zf:
            for p in sorted((root / sub).iterdir()):
                zf.write(p, f"audio/{p.name}")
        zips.append(z)
    with zipfile.ZipFile(tmp_path / "archive_batch_002.zip", "w") as zf:
        zf.write(root / "song.mp3", "audio/song.mp3")
        zf.write(root / "bad" / "corrupt.wav", "audio/corrupt.wav")
    zips.append(tmp_path / "archive_batch_002.zip")
    csv_path = tmp_path / "desc.csv"
    csv_path.write_text('path,description\naudio/song.mp3,"piano, sparse"\naudio/corrupt.wav,broken\n')
    out = tmp_path / "data"
    report = prepare_collection(PrepareConfig(output_dir=out, input_zip=zips, descriptions_file=str(csv_path),
                                                valid_ratio=0.0, no_progress=True))
    meta = json.loads((out / "metadata.json").read_text())
    sources = sorted({e["source"] for e in meta["train"]})
    assert sources == ["archive_batch_000.zip:audio/stereo44k.wav", "archive_batch_001.zip:audio/long_track.wav",
                       "archive_batch_002.zip:audio/song.mp3"]
    assert report["segments"]["written"] == 4 and meta["valid"] == []
    assert {e["description"] for e in meta["train"]} == {"warm lo-fi chords", "slow ambient pad", "piano, sparse"}
    assert [r["source"] for r in report["skipped"]] == ["archive_batch_002.zip:audio/corrupt.wav"]


def test_metadata_jsonl_inside_or_beside_the_zips_needs_no_flag(collection, tmp_path):
    """The seed layout: archive_batch_*.zip with metadata.jsonl beside them ({"path": "audio/x.wav", ...});
    one zip carries its own (in a nested folder, paths relative to it), which wins for its members."""
    root, _ = collection
    batches = tmp_path / "batches"
    batches.mkdir()
    with zipfile.ZipFile(batches / "archive_batch_0001.zip", "w") as zf:
        zf.write(root / "song.mp3", "audio/song.mp3")
        zf.write(root / "nodesc.ogg", "audio/nodesc.ogg")
    with zipfile.ZipFile(batches / "archive_batch_0002.zip", "w") as zf:
        zf.write(root / "b" / "deep" / "track.flac", "batch_0002/audio/deep/track.flac")
        zf.writestr("batch_0002/metadata.jsonl", json.dumps(
            {"path": "audio/deep/track.flac", "duration": 13.0, "sample_rate": 48000, "description": "inside wins"}))
    (batches / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"path": "audio/song.mp3", "duration": 12.5, "sample_rate": 32000, "description": "beside: piano"},
        {"path": "audio/deep/track.flac", "duration": 13.0, "sample_rate": 48000, "description": "beside loses"}]))
    out = tmp_path / "data"
    proc = run_script("prepare_data.py", "--input_zip", batches / "archive_batch_0001.zip",
                      batches / "archive_batch_0002.zip", "--output_dir", out, "--valid_ratio", 0, "--no_progress")
    meta = json.loads((out / "metadata.json").read_text())
    got = {e["source"]: e["description"] for e in meta["train"]}
    assert got == {"archive_batch_0001.zip:audio/song.mp3": "beside: piano",
                   "archive_batch_0002.zip:batch_0002/audio/deep/track.flac": "inside wins"}
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["descriptions"]["metadata_jsonl"] == 2
    assert report["no_description"] == ["archive_batch_0001.zip:audio/nodesc.ogg"]
    assert "2 metadata.jsonl" in proc.stderr


def test_normalize_loudness_hits_target(tmp_path):
    import pyloudnorm

    root = tmp_path / "raw"
    root.mkdir()
    sf.write(root / "quiet.wav", _music(15, 32000, seed=7) * 0.05, 32000)
    (root / "quiet.txt").write_text("quiet chords")
    out = tmp_path / "data"
    report = prepare_collection(PrepareConfig(output_dir=out, input_dir=[root], valid_ratio=0.0,
                                                normalize_loudness=-20.0, no_progress=True))
    assert report["loudness"] == {"normalized": 1}
    wav, sr = sf.read(out / json.loads((out / "metadata.json").read_text())["train"][0]["audio"])
    assert abs(pyloudnorm.Meter(sr).integrated_loudness(wav) + 20.0) < 0.3


def wav_with_header(path, seconds=16.0, sample_rate=None, channels=None, sr=32000, seed=0):
    """A valid 16-bit WAV of music whose header then claims another sample rate or channel count (a damaged
    or hand-made header: libsndfile opens it as it says)."""
    import struct

    sf.write(path, _music(seconds, sr, seed=seed), sr, subtype="PCM_16")
    b = bytearray(path.read_bytes())
    if sample_rate is not None:
        b[24:28], b[28:32] = struct.pack("<I", sample_rate), struct.pack("<I", (sample_rate * 2) % 2**32)
    if channels is not None:
        b[22:24] = struct.pack("<H", channels)
    path.write_bytes(bytes(b))
    return path


def test_a_header_of_0_or_1_hz_among_good_files_is_skipped_and_the_run_goes_on(tmp_path):
    """0 Hz ended the run with a ZeroDivisionError naming no file; 1 Hz asked the resampler for 32,000x the
    samples (bad_alloc, or a segfault). Each is now one skipped entry with its reason."""
    root = tmp_path / "raw"
    root.mkdir()
    sf.write(root / "good.wav", _music(16, 44100, seed=1), 44100)
    wav_with_header(root / "zero_hz.wav", sample_rate=0)
    wav_with_header(root / "one_hz.wav", seconds=0.02, sample_rate=1)  # 640 frames: "640 s"
    out = tmp_path / "data"
    proc = run_script("prepare_data.py", "--input_dir", root, "--output_dir", out, "--default_description", "x",
                      "--valid_ratio", 0, "--no_progress", check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "prepare_report.json").read_text())
    reasons = {r["source"]: (r["kind"], r["reason"]) for r in report["skipped"]}
    assert sorted(reasons) == ["one_hz.wav", "zero_hz.wav"]
    assert reasons["zero_hz.wav"][0] == "unreadable" and "0 Hz" in reasons["zero_hz.wav"][1]
    assert reasons["one_hz.wav"][0] == "unreadable" and "1 Hz" in reasons["one_hz.wav"][1]
    assert [e["source"] for e in json.loads((out / "metadata.json").read_text())["train"]] == ["good.wav"]
    assert "zero_hz.wav" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name,sr,channels,subtype", [
    ("a.wav", 44100, 2, "PCM_16"), ("b.flac", 48000, 1, None), ("c.mp3", 44100, 2, None), ("d.ogg", 22050, 1, None),
    ("e.wav", 32000, 2, "FLOAT"), ("f.wav", 16000, 3, "PCM_24")])
def test_streamed_decode_equals_the_whole_file_decode(tmp_path, name, sr, channels, subtype):
    """Blocks of any size through the soxr stream concatenate to exactly load_audio's whole-file samples
    (librosa.resample, soxr_hq), length included."""
    from musicgen_lora.audio.reader import load_audio, stream_audio

    x = _music(9.3, sr, seed=4)
    x = np.stack([x * (0.9 - 0.2 * c) for c in range(channels)], axis=1) if channels > 1 else x
    sf.write(tmp_path / name, x, sr, subtype=subtype)
    whole = load_audio(tmp_path / name, SR_OUT, channels=None)
    for block in (1 << 20, 5000, 777):
        streamed = np.concatenate(list(stream_audio(tmp_path / name, SR_OUT, block_samples=block)), axis=1)
        assert streamed.dtype == np.float32 and np.array_equal(streamed, whole), block


@pytest.mark.parametrize("seconds,channels", [(0.39, 1), (0.5, 2), (7.77, 1), (61.3, 2)])
def test_streamed_loudness_equals_pyloudnorm(seconds, channels):
    """LoudnessMeter fed in blocks gives pyloudnorm's whole-track integrated loudness exactly, and the
    normalised samples are the old whole-track formula's."""
    import pyloudnorm

    from musicgen_lora.data.preparation import LoudnessMeter

    wav = _music(seconds, SR_OUT, channels=channels, seed=9)
    wav[len(wav) // 3:len(wav) // 2] *= 0.001  # a quiet stretch: the relative gate drops it
    meter = LoudnessMeter(SR_OUT)
    for start in range(0, len(wav), 9999):
        meter.feed(wav[start:start + 9999])
    if seconds < 0.4:
        assert meter.gains(-14.0)[1] == {"status": "too short to measure"}
        return
    expected = pyloudnorm.Meter(SR_OUT).integrated_loudness(wav.astype(np.float64))
    assert meter.integrated() == expected
    factors, info = meter.gains(-3.0)  # loud target: peak-limited
    out = wav * np.float32(10 ** ((-3.0 - expected) / 20))
    out = out * np.float32(0.999 / float(np.max(np.abs(out))))
    assert info["status"] == "peak-limited" and len(factors) == 2
    scaled = wav
    for f in factors:
        scaled = scaled * f
    assert np.array_equal(scaled, out.astype(np.float32))


def test_a_track_failing_halfway_leaves_nothing_and_a_long_non_streamable_file_is_refused(tmp_path, monkeypatch):
    """NaN at 35 s of a 50 s track: its first two segments were written before the NaN was read; they are
    removed and the track is skipped. A file soundfile cannot open is decoded whole only up to
    MAX_WHOLE_SECONDS (here lowered to 10 s): longer, it is refused with its reason."""
    from musicgen_lora.audio import reader

    root = tmp_path / "raw"
    root.mkdir()
    sf.write(root / "good.wav", _music(16, 32000, seed=1), 32000)
    broken = _music(50, 32000, seed=2)
    broken[35 * 32000] = np.nan
    sf.write(root / "nan_late.wav", broken, 32000, subtype="FLOAT")
    sf.write(root / "zlong.wav", _music(12, 32000, seed=3), 32000)
    real = reader._sound_file

    def refuse_zlong(path):  # as if soundfile could not read it: the fallback (librosa) decodes it whole
        if str(path).endswith("zlong.wav"):
            raise sf.LibsndfileError(0, "not a format soundfile reads")
        return real(path)

    monkeypatch.setattr(reader, "_sound_file", refuse_zlong)
    monkeypatch.setattr(reader, "MAX_WHOLE_SECONDS", 10)
    out = tmp_path / "data"
    report = prepare_collection(PrepareConfig(output_dir=out, input_dir=[root], valid_ratio=0.0,
                                                default_description="x", no_progress=True))
    reasons = {r["source"]: (r["kind"], r["reason"]) for r in report["skipped"]}
    assert reasons["nan_late.wav"] == ("unreadable", "audio holds NaN/inf samples; re-export it")
    assert reasons["zlong.wav"][0] == "not streamable", reasons["zlong.wav"]
    assert "convert it to FLAC or WAV" in reasons["zlong.wav"][1]
    assert report["skipped_by_kind"] == {"unreadable": 1, "not streamable": 1}
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"{output_stem('good.wav')}_000.wav"]
    monkeypatch.setattr(reader, "MAX_WHOLE_SECONDS", 20)  # under the limit: decoded whole, used
    report = prepare_collection(PrepareConfig(output_dir=tmp_path / "d2", input_dir=[root], valid_ratio=0.0,
                                                default_description="x", no_progress=True))
    assert "zlong.wav" not in {r["source"] for r in report["skipped"]}
