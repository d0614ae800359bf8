"""A large collection prepared over many runs: no second collection, moved batch, changed rule or
ambiguous zip replaces committed work without being asked (prepare_data.py, both routes)."""
import io
import json
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


def make_zip(path, freqs, members=None):
    """A zip batch of 3 s tones (one per frequency) with a description each, as the seed's batches
    ship them (metadata.jsonl beside the zips is not needed: --default_description)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for i, f in enumerate(freqs):
            name = members[i] if members else f"audio/track_{i}.wav"
            zf.writestr(name, _wav(3.0, f, seed=int(f)))
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
