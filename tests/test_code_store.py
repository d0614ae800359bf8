"""The code store (data/code_store.py): codes read back exactly, units commit whole or not at all, a unit
of other codes or a damaged one (codes.bin flipped in place, a null or unknown key included) is skipped by
name, concurrent writers give what one writer gives, and the settings keys are what they were."""
import errno
import json
import multiprocessing
import os
import pickle
import signal
import stat

import numpy as np
import pytest
import torch

from musicgen_lora.audio.codes import crop_codes
from musicgen_lora.audio.reader import RESAMPLER, piece_samples
from musicgen_lora.core.common import UserError
from musicgen_lora.core.outputs import DiskFull
from musicgen_lora.data import code_store
from musicgen_lora.data.code_cache import codec_identity, codec_settings
from musicgen_lora.data.code_store import (
    CodeStore,
    StoreKey,
    UnitWriter,
    committed_units,
    is_committed,
    remove_unit,
    store_summary,
    units_dir,
)
from musicgen_lora.data.metadata import read_metadata
from musicgen_lora.model.checkpoint import load_model_and_processor

HOP = 640
SOURCE = {"zip": "batch_0001.zip", "size": 123, "sha256": "ab" * 32}


def make_key(k: int = 4, **change) -> StoreKey:
    """A synthetic key: K=4 is the mono layout, K=8 the interleaved stereo one."""
    key = StoreKey(codec="c0" * 32, sample_rate=32000, channels="mono-mean" if k == 4 else "2ch-interleaved",
                   hop_length=HOP, num_codebooks=k, dtype="torch.float32", piece_samples=piece_samples(32000, HOP),
                   resampler=RESAMPLER, encode="pieces")
    return StoreKey(**{**key.__dict__, **change})


def random_clips(seed: int, k: int, n: int, prefix: str = "clip") -> list[dict]:
    """n clips of 1-120 frames, random codes over MusicGen's 2048-entry codebooks."""
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        frames = int(rng.integers(1, 120))
        out.append({"name": f"{prefix}_{j:03d}", "codes": torch.from_numpy(rng.integers(0, 2048, (k, frames))),
                    "num_samples": frames * HOP - int(rng.integers(0, HOP)), "duration": frames / 50,
                    "split": "valid" if j % 4 == 3 else "train", "description": f"{prefix} {j}: lo-fi beat, piano"})
    return out


def write_unit(store, unit_id, key, clips, source=SOURCE):
    with UnitWriter(store, unit_id, key, source) as w:
        for c in clips:
            w.add(c["name"], c["codes"], c["num_samples"], c["description"], c["split"], c["duration"],
                  f"{unit_id}/{c['name']}.wav", condition_audio=f"stems/{c['name']}.wav")


def by_name(store: CodeStore) -> dict:
    """{clip name: (codes, num_samples, split, row)}: a store's contents, whatever the clip order."""
    return {store.clip_info(i)["name"]: (store.codes(i), store.num_samples(i), int(store._split[i]),
                                         store.clip_info(i)) for i in range(len(store))}


@pytest.mark.parametrize("k", [4, 8], ids=["mono-K4", "stereo-K8"])
def test_codes_read_back_exactly_as_whole_clips_and_windows(tmp_path, k):
    store_dir = tmp_path / "code_store"
    units = {"archive_batch_0002": random_clips(1, k, 7, "b"), "archive_batch_0001": random_clips(2, k, 9, "a"),
             "folder-shard-0003": []}  # a zip with nothing usable is a unit too: a re-run skips it
    for unit_id, clips in units.items():
        write_unit(store_dir, unit_id, make_key(k), clips)
    store = CodeStore(store_dir, make_key(k))
    written = units["archive_batch_0001"] + units["archive_batch_0002"]  # units are read in id order
    assert len(store) == 16 and store.units == sorted(units) and not store.skipped

    rng = np.random.default_rng(0)
    for i, clip in enumerate(written):
        codes, frames = clip["codes"], clip["codes"].shape[1]
        assert store.num_frames(i) == frames and store.num_samples(i) == clip["num_samples"]
        assert store.codes(i).dtype == torch.long and torch.equal(store.codes(i), codes)
        for offset in [0, frames - 1, frames, frames + 5, *rng.integers(0, frames, 3)]:
            n = int(rng.integers(1, 80))
            window = store.window(i, int(offset), n)  # past the clip's end: shorter, never the next clip's
            assert window.shape == (k, max(0, min(n, frames - offset)))
            assert torch.equal(window, codes[:, offset:offset + n])
        info = store.clip_info(i)
        assert info["name"] == clip["name"] and info["condition_audio"] == f"stems/{clip['name']}.wav"
    assert store.descriptions([15, 0, 9]) == [written[15]["description"], written[0]["description"],
                                              written[9]["description"]]
    assert list(store.split_indices("valid")) == [i for i, c in enumerate(written) if c["split"] == "valid"]

    # On disk: int16, frame-major, so one window of one clip is one contiguous slice.
    unit = units_dir(store_dir) / "archive_batch_0001"
    raw = np.fromfile(unit / "codes.bin", dtype="<i2")
    first = units["archive_batch_0001"][0]["codes"]
    assert raw.size == sum(c["codes"].numel() for c in units["archive_batch_0001"])
    assert np.array_equal(raw[:first.numel()].reshape(-1, k), first.numpy().T)


def test_training_clip_window_matches_the_code_cache_crop(tmp_path):
    """store.window gives what dataset's load_codes + crop_codes give from a per-clip cache entry."""
    clip = random_clips(3, 4, 1)[0]
    write_unit(tmp_path / "store", "u1", make_key(), [clip])
    store = CodeStore(tmp_path / "store", make_key())
    for offset in (0, 10, clip["codes"].shape[1] - 3):
        window, _ = crop_codes(clip["codes"], clip["num_samples"], offset, 40, HOP)
        assert torch.equal(store.window(0, offset, 40), window)


@pytest.mark.parametrize("bad", [-1, 32768, 70000])
def test_codes_outside_int16_are_refused_with_one_clear_line(tmp_path, bad):
    clip = random_clips(4, 4, 1)[0]
    clip["codes"][2, 5] = bad
    with pytest.raises(UserError, match=r"outside the store's int16 range \[0, 32767\].*MusicGen checkpoint"):
        write_unit(tmp_path / "store", "u1", make_key(), [clip])
    assert os.listdir(units_dir(tmp_path / "store")) == []


@pytest.mark.parametrize("error,expected,match", [
    (RuntimeError("decoder crashed"), RuntimeError, "decoder crashed"),
    (KeyboardInterrupt(), KeyboardInterrupt, None),
    (OSError(errno.ENOSPC, "No space left on device"), DiskFull, "archive_batch_0001: could not be written "
                                                                 r"\(no space left on device"),
], ids=["error", "ctrl-c", "disk-full"])
def test_an_exception_inside_the_writer_commits_nothing(tmp_path, error, expected, match):
    store_dir = tmp_path / "store"
    with pytest.raises(expected, match=match):
        with UnitWriter(store_dir, "archive_batch_0001", make_key(), SOURCE) as w:
            for c in random_clips(5, 4, 3):
                w.add(c["name"], c["codes"], c["num_samples"], c["description"], c["split"], c["duration"], "x")
            raise error
    assert os.listdir(units_dir(store_dir)) == []  # no unit, and the writer removed its own temp
    assert not is_committed(store_dir, "archive_batch_0001") and len(CodeStore(store_dir, make_key())) == 0


def _killed_writer(store_dir, clips):
    """A writer SIGKILLed mid-unit: no cleanup of any kind runs."""
    with UnitWriter(store_dir, "archive_batch_0009", make_key(), SOURCE) as w:
        w.add(clips[0]["name"], clips[0]["codes"], clips[0]["num_samples"], "d", "train", 1.0, "x")
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_writers_temp_is_swept_by_the_next_open(tmp_path):
    store_dir = tmp_path / "store"
    write_unit(store_dir, "archive_batch_0001", make_key(), random_clips(6, 4, 2))
    proc = multiprocessing.get_context("fork").Process(target=_killed_writer, args=(store_dir, random_clips(7, 4, 1)))
    proc.start()
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    temps = [n for n in os.listdir(units_dir(store_dir)) if n.startswith(".archive_batch_0009.tmp-")]
    assert temps == [f".archive_batch_0009.tmp-{proc.pid}-{temps[0].rsplit('-', 1)[1]}"]
    assert list(committed_units(store_dir)) == ["archive_batch_0001"]  # a temp is never a unit
    live = units_dir(store_dir) / f".archive_batch_0010.tmp-{os.getpid()}-0badc0de"
    live.mkdir()  # a live writer's temp is left alone
    assert len(CodeStore(store_dir, make_key())) == 2
    assert sorted(os.listdir(units_dir(store_dir))) == [live.name, "archive_batch_0001"]


def test_a_committed_unit_is_never_overwritten(tmp_path):
    store_dir = tmp_path / "store"
    first, second = random_clips(8, 4, 3, "first"), random_clips(9, 4, 2, "second")
    write_unit(store_dir, "archive_batch_0001", make_key(), first)
    with pytest.raises(UserError, match="archive_batch_0001: code-store unit already written.*delete that folder"):
        write_unit(store_dir, "archive_batch_0001", make_key(), second)

    # Two writers of one unit at once: the later commit is refused, the first stays whole.
    late = UnitWriter(store_dir, "archive_batch_0002", make_key(), SOURCE).__enter__()
    c = second[0]
    late.add(c["name"], c["codes"], c["num_samples"], c["description"], c["split"], c["duration"], "x")
    write_unit(store_dir, "archive_batch_0002", make_key(), first)
    with pytest.raises(UserError, match="already written"):
        late.__exit__(None, None, None)
    store = CodeStore(store_dir, make_key())
    assert [store.clip_info(i)["name"] for i in range(len(store))] == [c["name"] for c in first] * 2
    assert [n for n in os.listdir(units_dir(store_dir)) if n.startswith(".")] == []

    # A changed source: is_committed says redo; remove_unit then write replaces it.
    assert is_committed(store_dir, "archive_batch_0001", dict(SOURCE))
    changed = {**SOURCE, "size": 124}
    assert is_committed(store_dir, "archive_batch_0001") and not is_committed(store_dir, "archive_batch_0001", changed)
    remove_unit(store_dir, "archive_batch_0001")
    write_unit(store_dir, "archive_batch_0001", make_key(), second, source=changed)
    assert is_committed(store_dir, "archive_batch_0001", changed)
    assert committed_units(store_dir)["archive_batch_0001"]["clips"] == 2


@pytest.mark.parametrize("unit_id", ["../escape", ".hidden", "a/b", "", "x" * 129, "zip batch 1"])
def test_unit_ids_must_be_filesystem_safe(tmp_path, unit_id):
    with pytest.raises(UserError, match="not a usable code-store unit id"):
        UnitWriter(tmp_path, unit_id, make_key(), SOURCE)


@pytest.mark.parametrize("change", [{"codec": "d1" * 32}, {"sample_rate": 24000}, {"channels": "2ch-interleaved"},
                                    {"format": 2}, {"piece_samples": 640}, {"dtype": "torch.float16"}],
                         ids=lambda c: next(iter(c)))
def test_a_unit_of_other_codes_is_skipped_with_one_warning_naming_it(tmp_path, caplog, change):
    store_dir = tmp_path / "store"
    write_unit(store_dir, "archive_batch_0001", make_key(), random_clips(10, 4, 3))
    write_unit(store_dir, "archive_batch_0002", make_key(**change), random_clips(11, 4, 2))
    store = CodeStore(store_dir, make_key())
    assert len(store) == 3 and store.units == ["archive_batch_0001"] and list(store.skipped) == ["archive_batch_0002"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "archive_batch_0002" in warnings[0] and next(iter(change)) in warnings[0]
    assert "\n" not in warnings[0] and "skipped" in warnings[0]


def _truncate_codes(unit):
    with open(unit / "codes.bin", "r+b") as f:
        f.truncate(os.path.getsize(unit / "codes.bin") - 8)


def _edit_index(unit):
    index = np.load(unit / "index.npy")
    index["num_frames"][0] += 1
    index["num_frames"][1] -= 1
    np.save(unit / "index.npy", index)


def _edit_unit_json(unit):
    data = json.loads((unit / "unit.json").read_text())
    data["checksum"]["codes_bytes"] += 8
    (unit / "unit.json").write_text(json.dumps(data))


DAMAGE = {"truncated codes.bin": (_truncate_codes, "codes.bin"), "edited index.npy": (_edit_index, "index.npy"),
          "no clips.jsonl": (lambda u: (u / "clips.jsonl").unlink(), "clips.jsonl"),
          "no index.npy": (lambda u: (u / "index.npy").unlink(), "index.npy"),
          "garbled unit.json": (lambda u: (u / "unit.json").write_text("{"), "unit.json"),
          "edited unit.json": (_edit_unit_json, "codes.bin")}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_unit_is_detected_and_skipped_by_name(tmp_path, caplog, damage):
    store_dir = tmp_path / "store"
    write_unit(store_dir, "archive_batch_0001", make_key(), random_clips(12, 4, 3))
    write_unit(store_dir, "archive_batch_0002", make_key(), random_clips(13, 4, 4))
    do, named = DAMAGE[damage]
    do(units_dir(store_dir) / "archive_batch_0002")
    store = CodeStore(store_dir, make_key())
    assert len(store) == 3 and list(store.skipped) == ["archive_batch_0002"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "archive_batch_0002" in warnings[0] and named in warnings[0], warnings


def test_an_edited_clips_jsonl_is_refused_when_read(tmp_path):
    """Same size, other bytes: caught by its sha256 when descriptions are read (not at open: lazily)."""
    store_dir = tmp_path / "store"
    write_unit(store_dir, "u1", make_key(), random_clips(14, 4, 3))
    path = units_dir(store_dir) / "u1" / "clips.jsonl"
    path.write_text(path.read_text().replace("lo-fi", "hi-fi", 1))
    store = CodeStore(store_dir, make_key())
    assert len(store) == 3 and torch.is_tensor(store.codes(2))
    with pytest.raises(UserError, match="clips.jsonl: does not match the checksum.*delete"):
        store.descriptions([0])


def _write_units(store_dir, unit_ids):
    for unit_id in unit_ids:
        n = int(unit_id[-1])
        write_unit(store_dir, unit_id, make_key(), random_clips(100 + n, 4, 5 + n, f"u{n}"),
                   source={"zip": f"{unit_id}.zip"})


def test_two_writer_processes_give_what_one_writer_gives(tmp_path):
    ids = [f"archive_batch_000{n}" for n in range(1, 7)]
    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=_write_units, args=(tmp_path / "two", ids[j::2])) for j in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    _write_units(tmp_path / "one", ids)

    two, one = CodeStore(tmp_path / "two", make_key()), CodeStore(tmp_path / "one", make_key())
    assert two.units == one.units == ids and len(two) == len(one) == sum(5 + n for n in range(1, 7))
    a, b = by_name(two), by_name(one)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name][0], b[name][0]) and a[name][1:] == b[name][1:]
    for unit_id in ids:
        for f in ("codes.bin", "index.npy", "clips.jsonl"):
            assert (units_dir(tmp_path / "two") / unit_id / f).read_bytes() == \
                   (units_dir(tmp_path / "one") / unit_id / f).read_bytes()


class _Windows(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return len(self.store)

    def __getitem__(self, i):
        return self.store.window(i, 2, 30), os.getpid()


def test_store_reads_from_dataloader_workers(tmp_path):
    write_unit(tmp_path / "store", "u1", make_key(), random_clips(15, 4, 6))
    store = CodeStore(tmp_path / "store", make_key())
    expected = [store.window(i, 2, 30) for i in range(len(store))]  # files opened here first...
    assert store._fds and pickle.loads(pickle.dumps(store))._fds == {}  # ...never pickled
    loader = torch.utils.data.DataLoader(_Windows(store), batch_size=None, num_workers=2)
    got = list(loader)
    assert all(torch.equal(w, e) for (w, _), e in zip(got, expected))
    assert {pid for _, pid in got} - {os.getpid()}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_store_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        write_unit(tmp_path / "store", "archive_batch_0001", make_key(), random_clips(16, 4, 2))
    finally:
        os.umask(old)
    paths = [tmp_path / "store", *(tmp_path / "store").rglob("*")]
    assert len(paths) == 8  # store, units, the unit, its 5 files
    for path in paths:
        want = (0o777 if path.is_dir() else 0o666) & ~mask  # 0644 / 0755 under the usual 022
        assert stat.S_IMODE(path.stat().st_mode) == want, (path, oct(path.stat().st_mode))


def test_store_summary_counts_units_clips_hours_and_bytes(tmp_path):
    store_dir = tmp_path / "store"
    a, b = random_clips(17, 4, 8), random_clips(18, 4, 5)
    write_unit(store_dir, "u1", make_key(), a)
    with UnitWriter(store_dir, "u2", make_key(), SOURCE) as w:
        for c in b:
            w.add(c["name"], c["codes"], c["num_samples"], c["description"], c["split"], c["duration"], "x")
        w.notes["skipped"] = [{"source": "broken.wav", "reason": "cannot decode"}]
    assert committed_units(store_dir)["u2"]["notes"] == {"skipped": [{"source": "broken.wav",
                                                                      "reason": "cannot decode"}]}
    s = store_summary(store_dir)
    valid = sum(c["split"] == "valid" for c in a + b)
    assert s["units"] == 2 and s["clips"] == {"train": 13 - valid, "valid": valid}
    assert s["hours"] == pytest.approx(sum(c["num_samples"] for c in a + b) / 32000 / 3600)
    assert s["bytes"] == sum(p.stat().st_size for p in store_dir.rglob("*") if p.is_file())
    assert "2 units" in code_store.format_summary(store_dir, s)


# --------------------------------------------------------------------------------------------
# With a real model: the cache's keys did not move, and the store holds what the cache holds
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_fixture,layout", [("tiny_model_dir", "mono-mean"),
                                                  ("tiny_stereo_model_dir", "2ch-interleaved")])
def test_store_keys_keep_their_settings(request, model_fixture, layout):
    """The settings as the per-clip cache keyed them, with one deliberate change: the encode rule
    "pieces" became "pieces-2row" when every codec LSTM call got at least two rows
    (codec._lstms_on_two_rows; a mono clip's codes could differ in ~2 per 100,000), so codes encoded
    before are encoded again rather than mixed with new ones."""
    model, _ = load_model_and_processor(str(request.getfixturevalue(model_fixture)))
    for sr in (32000, 16000):
        assert codec_settings(model, sr) == {"sample_rate": sr, "channels": layout, "resampler": "soxr_hq",
                                             "encode": "pieces-2row", "piece_samples": 30 * sr,
                                             "dtype": "torch.float32", "hop_length": 640}
    key = StoreKey.for_model(model)
    assert key.channels == layout and key.num_codebooks == (4 if layout == "mono-mean" else 8)
    assert key.channels_count == (1 if layout == "mono-mean" else 2)
    assert key.codec == codec_identity(model) and len(key.codec) == 64 and key.sample_rate == 32000


def test_real_encodec_codes_round_trip_and_match_encode_pieces(tiny_model_dir, example_data_dir, tmp_path):
    from musicgen_lora.audio.reader import load_audio
    from musicgen_lora.model.codec import encode_pieces

    model, _ = load_model_and_processor(str(tiny_model_dir))
    clips = read_metadata(example_data_dir)["train"][:2] + read_metadata(example_data_dir)["valid"][:1]
    key = StoreKey.for_model(model)
    whole = [(encode_pieces(model, [torch.from_numpy(w)]), len(w))
             for w in (load_audio(c.audio_path, 32000) for c in clips)]
    with UnitWriter(tmp_path / "store", "folder-shard-0000", key, {"folder": str(example_data_dir)}) as w:
        for clip, split, (codes, n) in zip(clips, ["train", "train", "valid"], whole):
            w.add(clip.audio_path.name, codes, n, clip.description, split, n / 32000, str(clip.audio_path))
    store = CodeStore(tmp_path / "store", key)
    assert len(store) == 3 and list(store.split_indices("valid")) == [2]
    for i, (codes, n) in enumerate(whole):
        assert store.num_samples(i) == n and torch.equal(store.codes(i), codes)
        assert len(codes.unique()) > 8  # real, diverse codes
        assert torch.equal(store.window(i, 37, 100), crop_codes(codes, n, 37, 100, 640)[0])
    assert store.descriptions([0, 1, 2]) == [c.description for c in clips]
    # A reader of another codec's codes never reads these.
    assert len(CodeStore(tmp_path / "store", StoreKey(**{**key.__dict__, "codec": "0" * 64}))) == 0


# --------------------------------------------------------------------------------------------
# Integrity: same-size damage to codes.bin, and unusable keys, skip one unit with one line
# --------------------------------------------------------------------------------------------
def _flip_codes(value):
    """Overwrite 2 codes in the middle of codes.bin in place (same size): `value` in the codebook's
    range trains silently on wrong tokens unless checked; out of it, the embedding raises IndexError."""
    def flip(unit):
        size = os.path.getsize(unit / "codes.bin")
        with open(unit / "codes.bin", "r+b") as f:
            f.seek(size // 2 & ~1)
            old = np.frombuffer(f.read(4), dtype="<i2")
            f.seek(size // 2 & ~1)
            f.write(np.array([value, value] if value != "other" else (old + 1) % 2048, dtype="<i2").tobytes())
    return flip


def _key(value):
    def edit(unit):
        data = json.loads((unit / "unit.json").read_text())
        data["key"] = value if not callable(value) else value(data["key"])
        (unit / "unit.json").write_text(json.dumps(data))
    return edit


INTEGRITY = {"codes flipped in range": _flip_codes("other"), "codes flipped out of range": _flip_codes(30000),
             "key null": _key(None), "key with an extra field": _key(lambda k: {**k, "vintage": 1}),
             "key missing a field": _key(lambda k: {n: v for n, v in k.items() if n != "codec"})}


@pytest.mark.parametrize("damage", INTEGRITY)
def test_same_size_damage_and_unusable_keys_skip_the_unit_with_one_line(tmp_path, caplog, damage):
    store_dir = tmp_path / "store"
    write_unit(store_dir, "archive_batch_0001", make_key(), random_clips(12, 4, 3))
    write_unit(store_dir, "archive_batch_0002", make_key(), random_clips(13, 4, 4))
    # The first unit in order: before, its key won recorded_key's tie and StoreKey(**key) raised a TypeError.
    INTEGRITY[damage](units_dir(store_dir) / "archive_batch_0001")
    assert code_store.recorded_key(store_dir) == make_key()  # the store stays usable
    store = CodeStore(store_dir, make_key())
    assert len(store) == 4 and list(store.skipped) == ["archive_batch_0001"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "archive_batch_0001" in warnings[0] and "\n" not in warnings[0], warnings
    if "codes" in damage:
        assert "codes.bin does not match the checksum" in warnings[0]
        with pytest.raises(UserError, match="archive_batch_0001.*--strict_store"):
            CodeStore(store_dir, make_key(), strict=True)


@pytest.mark.slow
def test_training_on_a_store_with_a_flipped_unit_warns_and_trains_on_the_rest(tiny_model_dir, tmp_path):
    """Through train_lora.py: one warning line naming the unit, no traceback; --strict_store: one error line."""
    from conftest import run_script

    model, _ = load_model_and_processor(str(tiny_model_dir))
    key, data = StoreKey.for_model(model), tmp_path / "data"
    for n in (1, 2):
        clips = random_clips(20 + n, 4, 4)
        for c in clips:
            c["codes"] = c["codes"] % 64  # the tiny codec's 64 codes
        write_unit(code_store.default_store_dir(data), f"archive_batch_000{n}", key, clips)
    _flip_codes(63)(units_dir(code_store.default_store_dir(data)) / "archive_batch_0002")
    common = ["--model_path", tiny_model_dir, "--data_dir", data, "--num_epochs", 1, "--batch_size", 2,
              "--target_duration", 1, "--no_progress", "--gradient_accumulation_steps", 1]
    proc = run_script("train_lora.py", *common, "--output_dir", tmp_path / "run")
    out = proc.stdout + proc.stderr
    assert "archive_batch_0002" in out and "codes.bin does not match the checksum" in out and "Traceback" not in out
    proc = run_script("train_lora.py", *common, "--output_dir", tmp_path / "strict", "--strict_store", check=False)
    assert proc.returncode == 2 and "error:" in proc.stderr and "--strict_store" in proc.stderr
