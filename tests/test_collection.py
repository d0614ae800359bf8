"""A large collection prepared over many runs: no second collection, moved batch, changed rule or
ambiguous zip replaces committed work without being asked (prepare_data.py, both routes)."""
import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import soundfile as sf

from musicgen_lora.data import code_store

from conftest import run_script

SR = 32000


def _wav(seconds, freq, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def make_zip(path, freqs, members=None, seconds=3.0):
    """A zip batch of `seconds` tones (one per frequency) with a description each, as the seed's batches
    ship them (metadata.jsonl beside the zips is not needed: --default_description)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for i, f in enumerate(freqs):
            name = members[i] if members else f"audio/track_{i}.wav"
            zf.writestr(name, _wav(seconds, f, seed=int(f)))
    return path


def codes_only(model, out, *zips, check=True, extra=()):
    return run_script("prepare_data.py", "--input_zip", *zips, "--output_dir", out, "--model_path", model,
                      "--codes_only", "--segment_duration", 1.0, "--default_description", "a tone", "--seed", 3,
                      "--no_progress", *extra, check=check)


def units(out) -> dict:
    """{unit id: unit.json} of the store under `out`."""
    return code_store.committed_units(code_store.default_store_dir(out))


def stamps(out) -> dict:
    return {u: (info["created"], info["checksum"]["index_sha256"]) for u, info in units(out).items()}


def test_two_collections_batch_zips_of_one_name_never_replace_each_other(tiny_model_dir, tmp_path):
    """Unit ids came from the zip's base name: another collection's batch_1.zip replaced this one's."""
    ours = make_zip(tmp_path / "ours" / "batch_1.zip", [220, 330])
    theirs = make_zip(tmp_path / "theirs" / "batch_1.zip", [440, 550, 660])
    out = tmp_path / "data"
    codes_only(tiny_model_dir, out, ours)
    first = stamps(out)
    proc = codes_only(tiny_model_dir, out, theirs)
    assert "0 already committed (skipped), 1 to encode" in proc.stderr
    after = units(out)
    assert len(after) == 2 and {u: stamps(out)[u] for u in first} == first  # ours untouched
    assert sorted(info["clips"] for info in after.values()) == [6, 9]  # 2 and 3 tracks of three 1 s segments
    assert all(u.startswith("batch_1-") for u in after)


def test_moved_batches_are_found_by_content_and_not_encoded_again(tiny_model_dir, tmp_path):
    batch = make_zip(tmp_path / "disk1" / "batch_1.zip", [220, 330])
    out = tmp_path / "data"
    codes_only(tiny_model_dir, out, batch)
    before = stamps(out)
    moved = tmp_path / "disk2" / "renamed_batch.zip"
    moved.parent.mkdir()
    shutil.copy(batch, moved)
    proc = codes_only(tiny_model_dir, out, moved)
    assert "1 already committed (skipped), 0 to encode" in proc.stderr and stamps(out) == before


def test_a_changed_rule_refuses_naming_what_would_be_encoded_again_and_the_flag(tiny_model_dir, tmp_path):
    """A re-run with --seed 1 (or a typo in --segment_duration) deleted and re-encoded every unit."""
    zips = [make_zip(tmp_path / f"batch_{n}.zip", [220 + 50 * n, 330 + 50 * n]) for n in (1, 2)]
    out = tmp_path / "data"
    codes_only(tiny_model_dir, out, *zips)
    before = stamps(out)
    proc = codes_only(tiny_model_dir, out, *zips, check=False, extra=("--segment_duration", 1.5))
    error = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and error.startswith("error: ")
    assert "2 committed unit(s)" in error and "segment_duration 1.0 -> 1.5" in error and "--overwrite" in error
    assert stamps(out) == before  # nothing removed, nothing added
    # The suggestion works: --overwrite re-encodes them and removes the old units once the new ones are in.
    again = codes_only(tiny_model_dir, out, *zips, extra=("--segment_duration", 1.5, "--overwrite"))
    assert "2 to encode" in again.stderr
    after = units(out)
    assert len(after) == 2 and not set(after) & set(before)
    assert all(info["source"]["rules"]["segment_duration"] == 1.5 for info in after.values())
    assert not [p for p in code_store.units_dir(code_store.default_store_dir(out)).iterdir()
                if p.name.startswith(".")]


def test_a_zip_whose_files_changed_is_encoded_again_and_replaces_its_old_unit(tiny_model_dir, tmp_path):
    batch = make_zip(tmp_path / "batch_1.zip", [220, 330])
    out = tmp_path / "data"
    codes_only(tiny_model_dir, out, batch)
    (old,) = units(out)
    make_zip(batch, [220, 330, 440])  # the same path, one more track
    proc = codes_only(tiny_model_dir, out, batch)
    assert f"its files changed since unit {old} was encoded" in proc.stderr
    (new,) = units(out)
    assert new != old and units(out)[new]["clips"] == 9


def test_a_replaced_zip_unit_stays_for_a_training_reading_the_store(tiny_model_dir, tmp_path):
    """A training has the store open (store_splits, as train_lora.py) when the zip it came from is
    encoded again: its old unit must stay readable until the training lets go (before, it was removed
    at once and the training's next open of its codes.bin raised FileNotFoundError), new readers see
    the new unit only, and the next run removes the old one."""
    batch = make_zip(tmp_path / "batch_1.zip", [220, 330])
    out = tmp_path / "data"
    codes_only(tiny_model_dir, out, batch)
    (old,) = units(out)
    training, splits = code_store.store_splits(out)
    make_zip(batch, [220, 330, 440])
    proc = codes_only(tiny_model_dir, out, batch)
    assert "stays until no other process" in proc.stderr
    for clip in splits["train"] + splits["valid"]:  # every row the training knows, from the old unit
        assert training.codes(clip.store_index).shape[-1] > 0
    (new,) = units(out)  # readers from now on: the new unit only, no clip twice
    reader, fresh = code_store.store_splits(out)
    assert reader.units == [new] and len(fresh["train"]) + len(fresh["valid"]) == 9
    reader.release()
    # The zip put back as it was while the training still reads: its kept unit serves again
    make_zip(batch, [220, 330])
    proc = codes_only(tiny_model_dir, out, batch)
    assert "serves again, nothing encoded" in proc.stderr
    assert list(units(out)) == [old] and code_store.superseded_units(out / "code_store") == {new}
    make_zip(batch, [220, 330, 440])  # and forward again
    codes_only(tiny_model_dir, out, batch)
    assert list(units(out)) == [new]
    training.release()
    codes_only(tiny_model_dir, out, batch)  # nothing to encode; nobody reading: the old unit goes
    assert not (code_store.units_dir(out / "code_store") / old).exists()
    assert os.listdir(code_store.units_dir(out / "code_store")) == [new]


@pytest.mark.parametrize("route", ["wav", "codes_only"])
def test_a_zip_with_two_members_of_one_name_uses_the_later_and_reports_the_earlier(tiny_model_dir, tmp_path, route):
    """A zip updated by appending holds two entries of one name; the WAV route ended in a
    FileNotFoundError traceback when it moved the second copy's segments."""
    batch = make_zip(tmp_path / "dup.zip", [220, 330, 440], members=["a/x.wav", "a/x.wav", "a/y.wav"])
    out = tmp_path / "data"
    if route == "wav":
        run_script("prepare_data.py", "--input_zip", batch, "--output_dir", out, "--segment_duration", 1.0,
                   "--default_description", "a tone", "--no_progress")
        report = json.loads((out / "prepare_report.json").read_text())
        skipped = report["skipped"]
        meta = json.loads((out / "metadata.json").read_text())
        sources = sorted({row["source"] for split in ("train", "valid") for row in meta.get(split, [])})
    else:
        codes_only(tiny_model_dir, out, batch)
        (info,) = units(out).values()
        skipped = info["notes"]["report"]["skipped"]
        rows = (code_store.units_dir(code_store.default_store_dir(out)) / next(iter(units(out))) / "clips.jsonl")
        sources = sorted({json.loads(r)["source"] for r in rows.read_text().splitlines()})
    assert sources == ["dup.zip:a/x.wav", "dup.zip:a/y.wav"]
    assert [(s["source"], s["kind"]) for s in skipped] == [("dup.zip:a/x.wav", "duplicate name")]
    assert "the later entry of that name is used" in skipped[0]["reason"]


def test_two_input_folders_holding_one_relative_path_keep_both_tracks(tmp_path):
    """a/song.wav under two --input_dir folders: one name for two tracks made their segments collide."""
    for folder, freq in (("one", 220), ("two", 440)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "song.wav").write_bytes(_wav(3.0, freq, seed=freq))
    out = tmp_path / "data"
    run_script("prepare_data.py", "--input_dir", tmp_path / "one", tmp_path / "two", "--output_dir", out,
               "--segment_duration", 1.0, "--default_description", "a tone", "--no_progress")
    meta = json.loads((out / "metadata.json").read_text())
    rows = [row for split in ("train", "valid") for row in meta.get(split, [])]
    assert len(rows) == 6 and len({row["source"] for row in rows}) == 2


# --------------------------------------------------------------------------------------------
# A validation split always exists
# --------------------------------------------------------------------------------------------
FAST_TRAIN = ("--num_epochs", 1, "--batch_size", 4, "--gradient_accumulation_steps", 1, "--target_duration", 2,
              "--logging_steps", 1, "--no_progress")


def _all_train(example_data_dir, out, tracks=None):
    """The example data with every clip in train; `tracks`: the metadata "source" of each clip."""
    meta = json.loads((example_data_dir / "metadata.json").read_text())
    rows = meta["train"] + meta["valid"]
    for i, row in enumerate(rows):
        row["audio"] = str((example_data_dir / row["audio"]).resolve())
        if tracks is not None:
            row["source"] = tracks(i)
    out.mkdir()
    (out / "metadata.json").write_text(json.dumps({"train": rows}))
    return out, rows


def _review(run):
    from musicgen_lora.reporting.review import review_lines

    return "\n".join(review_lines(run))


def test_data_without_a_valid_split_holds_out_whole_source_tracks(tiny_model_dir, example_data_dir, tmp_path):
    """The trainer validated on a slice of its own training clips and the review called the run healthy."""
    data, rows = _all_train(example_data_dir, tmp_path / "data", tracks=lambda i: f"song_{i // 2}")  # 2 clips a track
    run = tmp_path / "run"
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", data, "--output_dir", run,
                      *FAST_TRAIN)
    tracks = len(rows) // 2
    held = max(1, round(0.1 * tracks))
    assert f"no valid split; held out {held} of {tracks} source tracks ({2 * held} clips" in proc.stderr
    config = json.loads((run / "run_config.json").read_text())
    assert config["validation"] == "held out" and config["valid_clips"] == 2 * held
    assert config["train_clips"] == len(rows) - 2 * held  # held-out clips are never trained on
    assert "validation: on the first tenth of the training clips" not in _review(run)
    # The same tracks every time: a second run (another seed) holds out the same ones.
    again = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", data, "--output_dir",
                       tmp_path / "run2", "--seed", 5, *FAST_TRAIN)
    assert proc.stderr.split("held out")[1].split("\n")[0] == again.stderr.split("held out")[1].split("\n")[0]


def test_data_of_one_track_validates_on_training_clips_and_is_never_called_healthy(tiny_model_dir, example_data_dir,
                                                                                   tmp_path):
    data, rows = _all_train(example_data_dir, tmp_path / "data", tracks=lambda i: "one_long_mix")
    run = tmp_path / "run"
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", data, "--output_dir", run,
                      *FAST_TRAIN)
    assert "a single source track to hold out: validating on the first tenth of the training clips" in proc.stderr
    config = json.loads((run / "run_config.json").read_text())
    assert config["validation"] == "training clips"
    review = _review(run)
    assert "validation: on the first tenth of the training clips" in review and "healthy run" not in review


def test_a_store_without_valid_clips_holds_out_tracks_for_training(tiny_model_dir, tmp_path):
    zips = [make_zip(tmp_path / f"batch_{n}.zip", [220 + 50 * n, 330 + 50 * n, 440 + 50 * n]) for n in (1, 2, 3)]
    out = tmp_path / "data"
    proc = codes_only(tiny_model_dir, out, *zips, extra=("--valid_ratio", 0))
    assert "0 valid clips" in proc.stderr  # said at preparation, with what training will do
    run = tmp_path / "run"
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", out, "--output_dir", run,
                      *FAST_TRAIN)
    assert "held out 1 of 9 source tracks (3 clips" in proc.stderr
    assert json.loads((run / "run_config.json").read_text())["validation"] == "held out"


# --------------------------------------------------------------------------------------------
# Signals: any moment of a preparation, 130/143, one line, and a re-run finishes the same store
# --------------------------------------------------------------------------------------------
def _store_contents(out):
    """{unit: (clips.jsonl, codes.bin, index.npy)}: what a store holds, not when it was written."""
    root = code_store.units_dir(code_store.default_store_dir(out))
    return {u.name: tuple((u / f).read_bytes() for f in ("clips.jsonl", "codes.bin", "index.npy"))
            for u in sorted(root.iterdir()) if not u.name.startswith(".")}


def _wav_outputs(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".musicgen_lora.json"}  # the manifest holds a run id


def _moments(route, out):
    """Three moments inside the work, each a test on what is on disk: the first log line (the model or
    the sources being read), the first unit/segment being written, and later (a unit committed, or
    half the segments cut)."""
    units = code_store.units_dir(code_store.default_store_dir(out))

    def staged():
        return [p for d in out.glob(".prepare.tmp-*") for p in d.rglob("*.wav")] if out.is_dir() else []

    if route == "codes_only":
        return [lambda: True, lambda: any(units.glob(".*")) if units.is_dir() else False,
                lambda: any(units.glob("batch_1-*"))]
    return [lambda: True, lambda: len(staged()) > 0, lambda: len(staged()) > 60]


@pytest.mark.slow
@pytest.mark.parametrize("route", ["codes_only", "wav"])
def test_a_signal_at_any_moment_ends_in_one_line_and_a_rerun_finishes_the_same_data(tiny_model_dir, tmp_path,
                                                                                       route):
    """SIGINT once ended --codes_only in an AssertionError (exit 1): it landed in soundfile's I/O
    callback and was swallowed. Now SIGINT and SIGTERM at three moments of the work give 130 or 143
    with one line, and running the command again gives what an uninterrupted run gives."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import LORA

    zips = [make_zip(tmp_path / "in" / f"batch_{n}.zip", [200 + 30 * n + 7 * i for i in range(4)], seconds=10)
            for n in (1, 2, 3)]
    args = [sys.executable, str(LORA / "prepare_data.py"), "--input_zip", *map(str, zips), "--segment_duration", "1",
            "--default_description", "a tone", "--no_progress"]
    if route == "codes_only":
        args += ["--codes_only", "--model_path", str(tiny_model_dir)]
    contents = _store_contents if route == "codes_only" else _wav_outputs

    def started(out):
        """The command with stderr in a file, once it has said its first line (before it, Python is
        importing the package, and Ctrl-C there is Python's own)."""
        log = open(tmp_path / f"{out.name}.log", "w+")
        proc = subprocess.Popen([*args, "--output_dir", str(out)], stdout=subprocess.DEVNULL, stderr=log, text=True)
        while proc.poll() is None and not os.path.getsize(log.name):
            time.sleep(0.002)
        return proc, log

    proc, _ = started(tmp_path / "reference")
    assert proc.wait(timeout=300) == 0
    reference = contents(tmp_path / "reference")
    interrupted = []
    signals = [signal.SIGINT, signal.SIGTERM, signal.SIGINT] if route == "codes_only" else \
        [signal.SIGTERM, signal.SIGINT, signal.SIGTERM]
    for n, sig in enumerate(signals):
        out = tmp_path / f"out{n}"
        proc, log = started(out)
        moment = _moments(route, out)[n]
        while proc.poll() is None and not moment():
            time.sleep(0.001)
        proc.send_signal(sig)
        proc.wait(timeout=300)
        log.seek(0)
        err = log.read()
        assert "Traceback" not in err, err[-3000:]
        # 0: it finished first; -sig: the signal came while Python was exiting after the work (a shell
        # shows 128 + sig either way)
        assert proc.returncode in (0, 128 + sig, -sig), err[-2000:]
        if proc.returncode == 128 + sig:
            interrupted.append(n)
            assert err.strip().splitlines()[-1].startswith(f"interrupted ({sig.name})")
            again = subprocess.run([*args, "--output_dir", str(out)], capture_output=True, text=True)
            assert again.returncode == 0, again.stderr[-2000:]
        assert contents(out) == reference
    assert len(interrupted) >= 2, interrupted  # the moments fell inside the work


def test_both_routes_print_the_same_summary_and_the_store_keeps_one_report(tiny_model_dir, tmp_path):
    """--codes_only said "33 files -> 30 segments" and named no skipped file; the WAV route printed each
    one. Now both print found = used + skipped by kind, and code_store/prepare_report.json sums every unit."""
    first = make_zip(tmp_path / "batch_1.zip", [220, 330], members=["a/x.wav", "a/x.wav"])  # one superseded
    with zipfile.ZipFile(first, "a") as zf:
        zf.writestr("a/broken.wav", b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
        zf.writestr("a/blip.wav", _wav(0.2, 500, seed=1))  # shorter than a segment
    second = make_zip(tmp_path / "batch_2.zip", [440, 550, 660])
    wav = run_script("prepare_data.py", "--input_zip", first, second, "--output_dir", tmp_path / "wav",
                     "--segment_duration", 1.0, "--default_description", "a tone", "--no_progress")
    codes_only(tiny_model_dir, tmp_path / "codes", first)
    codes = codes_only(tiny_model_dir, tmp_path / "codes", first, second)  # the second run adds one zip

    def summary(stderr):
        return [line for line in stderr.splitlines() if line.startswith(("files:", "segments:", "  skipped"))]

    expected = ("files: 7 found = 4 used + 3 skipped (1 unreadable, 1 too short, "
                "1 superseded by a later zip entry of the same name)")
    assert summary(wav.stderr)[0] == expected and summary(wav.stderr) == summary(codes.stderr)
    assert len([line for line in summary(codes.stderr) if line.startswith("  skipped")]) == 3
    report = json.loads((tmp_path / "codes" / "code_store" / "prepare_report.json").read_text())
    wav_report = json.loads((tmp_path / "wav" / "prepare_report.json").read_text())
    for key in ("files_found", "files_used", "files_skipped", "skipped_by_kind", "skipped"):
        assert report[key] == wav_report[key], key
    assert report["segments"]["written"] == wav_report["segments"]["written"] == 12 and len(report["units"]) == 2
