"""Bounded memory whatever the input: a clip far longer than the window, a 100 KB description, a zip
bomb. Each bad case runs the real command line in a child under an address-space cap (a regression
ends in an allocation error, never takes the machine down) and is compared with a normal case by the
child's peak RSS, measured in the same test. python -m benchmarks.limits prints the same
figures at full size (a one-hour clip, 2 GiB of zeros)."""
import json
import os
import sys
import tempfile
import zipfile

import numpy as np
import pytest
import soundfile as sf

from benchmarks.peak_memory import run_with_peak

from conftest import LORA, run_script

CAP = 6 * 2**30  # far above a tiny-model run (~1 GB), far below what the old code took for these inputs
SR = 32000


def peak_of(script, *args):
    """(exit code, stderr, peak RSS in MB) of a script run as a child under the address-space cap; the
    peak is the script's own, not pytest's (benchmarks/peak_memory.py says why that needs a launcher)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile("w+") as err:
        code, peak = run_with_peak([sys.executable, LORA / script, *args], CAP, env=env, stderr=err)
        err.seek(0)
        return code, err.read(), peak


def _music(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * 220 * r * t) for r in (1, 1.25, 1.5)) / 3 * 0.3
    return (x * (0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0)) + rng.standard_normal(len(t)) * 0.01).astype(np.float32)


def _data(root, train_seconds, description="lo-fi hip hop beat, mellow rhodes chords"):
    root.mkdir(parents=True)
    with sf.SoundFile(str(root / "train.wav"), "w", SR, 1, subtype="PCM_16") as f:
        for start in range(0, int(train_seconds), 60):  # written a minute at a time
            f.write(_music(min(60, train_seconds - start), seed=start))
    sf.write(root / "valid.wav", _music(8, seed=99), SR, subtype="PCM_16")
    (root / "metadata.json").write_text(json.dumps({
        "train": [{"audio": "train.wav", "description": description}],
        "valid": [{"audio": "valid.wav", "description": "lo-fi hip hop beat"}]}))
    return root


def _train(model, data, out, *extra):
    return ("train_lora.py", "--model_path", model, "--data_dir", data, "--output_dir", out, "--max_steps", 1,
            "--batch_size", 1, "--gradient_accumulation_steps", 1, "--target_duration", 8, "--save_steps", 0,
            "--no_progress", *extra)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    return {"normal": _data(root / "normal", 8), "long": _data(root / "long", 20 * 60),
            "wordy": _data(root / "wordy", 8, " ".join(["lo-fi hip hop beat with mellow rhodes chords"] * 2300))}


@pytest.mark.slow
def test_a_clip_150x_the_window_costs_what_a_normal_one_does(tiny_model_dir, datasets, tmp_path):
    """Through the code store (the one route: --no_cache no longer differs), encoding included."""
    rc, err, normal = peak_of(*_train(tiny_model_dir, datasets["normal"], tmp_path / "a",
                                      "--cache_dir", tmp_path / "cache-a"))
    assert rc == 0, err[-2000:]
    rc, err, long = peak_of(*_train(tiny_model_dir, datasets["long"], tmp_path / "b",
                                    "--cache_dir", tmp_path / "cache-b"))
    assert rc == 0, err[-2000:]
    print(f"peak RSS, train: 8 s clip {normal:.0f} MB, 20 min clip {long:.0f} MB ({long / normal:.2f}x)")
    # Encoded whole, 20 minutes took ~2.5 GB more (7 GB for an hour); read and encoded in pieces, ~nothing.
    assert long < normal * 1.3 + 100
    proc = run_script("test_dataset.py", "--data_dir", datasets["long"], "--target_duration", 8)
    assert "over 4x the 8 s window" in proc.stderr and "1200 s" in proc.stderr


@pytest.mark.slow
def test_a_100kb_description_is_cut_and_reported_once(tiny_model_dir, datasets, tmp_path):
    rc, err, normal = peak_of(*_train(tiny_model_dir, datasets["normal"], tmp_path / "a"))
    assert rc == 0, err[-2000:]
    rc, err, wordy = peak_of(*_train(tiny_model_dir, datasets["wordy"], tmp_path / "b"))
    assert rc == 0, err[-2000:]
    print(f"peak RSS, train: normal description {normal:.0f} MB, 100 KB description {wordy:.0f} MB "
          f"({wordy / normal:.2f}x)")
    assert wordy < normal * 1.3 + 100  # unbounded, the text encoder's attention took 23 GB
    cut = [line for line in err.splitlines() if "only its first 512 are used" in line]
    assert len(cut) == 1 and 'metadata.json: "train" entry 0' in cut[0]
    # The same bound where prompts come in: a huge prompt generates, with one line saying it was cut.
    proc = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts",
                      " ".join(["dark trap beat with booming 808"] * 3000), "--duration", 0.3,
                      "--output_dir", tmp_path / "gen", "--no_progress")
    (line,) = [x for x in proc.stderr.splitlines() if "only its first 512 are used" in x]
    assert line.startswith("warning: prompt 00_dark-trap-beat")
    assert len(list((tmp_path / "gen").glob("00_dark-trap-beat*.wav"))) == 1


def test_zip_members_over_the_limits_are_skipped_before_unpacking(tmp_path):
    song = tmp_path / "song.wav"
    sf.write(song, _music(16), SR, subtype="PCM_16")
    normal, bomb = tmp_path / "normal.zip", tmp_path / "bomb.zip"
    with zipfile.ZipFile(normal, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(song, "batch/song.wav")
        z.writestr("batch/song.txt", "lo-fi hip hop beat")
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(song, "batch/song.wav")
        z.writestr("batch/song.txt", "lo-fi hip hop beat")
        with z.open("batch/zeros.wav", "w", force_zip64=True) as member:  # 512 MB of zeros in ~0.5 MB
            for _ in range(32):
                member.write(bytes(2**24))
        z.writestr("batch/zeros.txt", "nothing")
    assert bomb.stat().st_size < 4 * 2**20
    rc, err, base = peak_of("prepare_data.py", "--input_zip", normal, "--output_dir", tmp_path / "a", "--no_progress")
    assert rc == 0, err[-2000:]
    rc, err, bombed = peak_of("prepare_data.py", "--input_zip", bomb, "--output_dir", tmp_path / "b", "--no_progress")
    assert rc == 0, err[-2000:]
    print(f"peak RSS, prepare_data: normal zip {base:.0f} MB, zip with 512 MB of zeros {bombed:.0f} MB "
          f"({bombed / base:.2f}x)")
    assert bombed < base * 1.3 + 100
    report = json.loads((tmp_path / "b" / "prepare_report.json").read_text())
    (skip,) = report["skipped"]
    assert skip["source"] == "bomb.zip:batch/zeros.wav" and skip["kind"] == "too large"
    assert "--max_compression_ratio 50" in skip["reason"] and "zip bomb" in skip["reason"]
    assert report["files_used"] == 1 and report["files_found"] == 2
    assert "1 refused by the zip limits" in err
    # The size limit, on a member of real audio: refused with the flag to raise, then accepted.
    proc = run_script("prepare_data.py", "--input_zip", normal, "--output_dir", tmp_path / "c", "--max_member_mb", 0.5,
                      "--no_progress", check=False)
    assert proc.returncode == 2 and "no segments written" in proc.stderr
    report = json.loads((tmp_path / "c" / "prepare_report.json").read_text())
    assert "over --max_member_mb 0.5" in report["skipped"][0]["reason"]
