"""Tempo and key as data: estimated from the audio (audio/tempo_key.py) on real rendered music with
the written tempo and key (tests/data/real_music), stored by prepare_data.py --tempo_key, and merged
into descriptions in training by audiocraft's rule (data/metadata.merge_music_info)."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_lora.audio.tempo_key import compare_key, compare_tempo, parse_key
from musicgen_lora.data.metadata import merge_music_info, music_info

REAL = Path(__file__).resolve().parent / "data" / "real_music"
PIECES = json.loads((REAL / "pieces.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("text, expected", [("F# minor", (6, "minor")), ("Ab major", (8, "major")),
                                            ("a minor", (9, "minor")), ("Bbm", (10, "minor")), ("C", (0, "major")),
                                            ("e-flat major", (3, "major")), ("H minor", None), (None, None)])
def test_parse_key(text, expected):
    assert parse_key(text) == expected


def test_key_and_tempo_relations():
    assert compare_key("A minor", "a minor") == "exact"
    assert compare_key("A minor", "C major") == compare_key("C major", "A minor") == "relative"
    assert compare_key("G major", "C major") == compare_key("F major", "C major") == "fifth"
    assert compare_key("C minor", "C major") == "parallel"
    assert compare_key("F# major", "C major") == "other" and compare_key(None, "C major") is None
    assert compare_tempo(123.0, 120) == "right" and compare_tempo(126.0, 120) == "wrong"
    assert compare_tempo(139.7, 70) == "double" and compare_tempo(60.5, 120) == "half"


def test_music_info_reads_what_audiocraft_reads():
    assert music_info({"bpm": "120", "key": "A Minor "}) == {"bpm": 120.0, "key": "a minor"}
    assert music_info({"bpm": "fast", "key": "C, G"}) == {}  # audiocraft: None, not an error
    assert music_info({"bpm": True, "key": ""}) == {} and music_info({}) == {}


def test_merge_follows_audiocraft_rule_and_is_off_by_default():
    rng = np.random.default_rng(0)
    always = {merge_music_info("lofi beat.", 120.0, "a minor", rng, 1.0, keep_other_p=1.0) for _ in range(50)}
    assert always == {"lofi beat. key: a minor. bpm: 120.0", "lofi beat. bpm: 120.0. key: a minor"}  # shuffled
    assert {merge_music_info("lofi beat", 120.0, None, rng, 1.0, drop_desc_p=1.0, keep_other_p=1.0)
            for _ in range(5)} == {"bpm: 120.0"}
    # Off (audiocraft's default 0): the description as it is, and the generator untouched, so runs
    # without the option draw the same windows and word dropouts as before.
    state = rng.bit_generator.state
    assert merge_music_info("lofi beat", 120.0, "a minor", rng, 0.0) == "lofi beat"
    assert rng.bit_generator.state == state
    # The probability: about a quarter of the draws at 0.25, each field in about half of those.
    draws = [merge_music_info("x", 120.0, "a minor", np.random.default_rng(i), 0.25) for i in range(4000)]
    merged = sum(d != "x" for d in draws) / len(draws)
    assert 0.16 < merged < 0.215  # 0.25 x (1 - 0.5 x 0.5) = 0.19: a merge that kept no field leaves "x"
    assert 0.10 < sum("key:" in d for d in draws) / len(draws) < 0.15


def test_the_dataset_merges_only_in_training(tmp_path):
    from musicgen_lora.data.dataset import MusicDataset
    from musicgen_lora.data.metadata import Clip

    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(32000 * 2, dtype=np.float32), 32000)
    clip = Clip(wav, "organ chorale", "train", 2.0, bpm=76.0, key="f# minor")
    kw = dict(hop_length=640, audio_channels=1)
    train = MusicDataset([clip], 32000, 1.0, train=True, merge_tempo_key_p=1.0, **kw)
    texts = set()
    for epoch in range(12):
        train.set_epoch(epoch)
        texts.add(train[0]["description"])
    assert any("key: f# minor" in t for t in texts) and any("bpm: 76.0" in t for t in texts)
    assert MusicDataset([clip], 32000, 1.0, train=False, merge_tempo_key_p=1.0, **kw)[0]["description"] == \
        "organ chorale"
    assert MusicDataset([clip], 32000, 1.0, train=True, **kw)[0]["description"] == "organ chorale"


@pytest.mark.slow
def test_tempo_and_key_of_the_rendered_set():
    from benchmarks.tempo_key import measure

    rows = measure(REAL)
    # Tempo: right within 4% or an octave off on every piece, right on most.
    assert all(r["tempo"] in ("right", "half", "double") for r in rows), rows
    assert sum(r["tempo"] == "right" for r in rows) >= len(rows) - 2
    keyed = [r for r in rows if r["key"]]
    assert sum(r["relation"]["krumhansl"] == "exact" for r in keyed) >= len(keyed) - 2, keyed
    assert sum(r["relation"]["krumhansl"] in ("exact", "relative", "fifth") for r in keyed) >= len(keyed) - 1
    drums = next(r for r in rows if r["piece"].startswith("drums"))
    assert drums["key"] is None and drums["est_key"]["krumhansl"] is None  # a drum kit has no key
    assert all(r["est_key"]["krumhansl"] is not None for r in keyed)


@pytest.mark.slow
def test_prepare_stores_tempo_and_key(tmp_path, tiny_model_dir):
    from musicgen_lora.data.code_store import store_splits
    from musicgen_lora.data.config import PrepareConfig
    from musicgen_lora.data.prepare import prepare
    from musicgen_lora.data.store_preparation import preparation_rules

    src = tmp_path / "src"
    src.mkdir()
    for name in ("guitar_bwv1.6", "harpsichord_haydn74"):
        x, sr = sf.read(REAL / PIECES[name]["file"], dtype="float32")
        sf.write(src / f"{name}.wav", x, sr)
        (src / f"{name}.txt").write_text(f"{name.split('_')[0]} piece")
    out = tmp_path / "data"
    prepare(PrepareConfig(input_dir=[str(src)], output_dir=str(out), tempo_key=True, valid_ratio=0.5,
                          segment_duration=15.0, no_progress=True))
    meta = json.loads((out / "metadata.json").read_text())
    entries = [e for split in meta.values() if isinstance(split, list) for e in split]
    assert len(entries) == 2
    for e in entries:
        name = Path(e["source"]).stem
        assert compare_tempo(e["bpm"], PIECES[name]["bpm"]) == "right", e
        assert compare_key(e["key"], PIECES[name]["key"]) == "exact", e
    # Without the option nothing is estimated (and nothing is paid for).
    out2 = tmp_path / "data2"
    prepare(PrepareConfig(input_dir=[str(src)], output_dir=str(out2), valid_ratio=0.5, no_progress=True))
    meta2 = json.loads((out2 / "metadata.json").read_text())
    assert not any("bpm" in e or "key" in e for split in meta2.values() if isinstance(split, list) for e in split)

    # --codes_only stores the same estimates in its rows, and training reads them from there.
    wav_route = {(Path(e["source"]).stem, e["start"]): (e["bpm"], e["key"]) for e in entries}
    for tempo_key, folder in ((True, "codes"), (False, "codes2")):
        cfg = PrepareConfig(input_dir=[str(src)], output_dir=str(tmp_path / folder), codes_only=True,
                            model_path=str(tiny_model_dir), tempo_key=tempo_key, valid_ratio=0.5,
                            segment_duration=15.0, no_progress=True)
        prepare(cfg)
        _, splits = store_splits(tmp_path / folder)
        clips = [c for split in splits.values() for c in split]
        assert len(clips) == 2
        if tempo_key:
            store, _ = store_splits(tmp_path / folder)
            rows = [store.clip_info(c.store_index) for c in clips]
            got = {(Path(r["source"]).stem, r["start"]): (c.bpm, c.key) for r, c in zip(rows, clips)}
            assert got == {k: (bpm, key.lower()) for k, (bpm, key) in wav_route.items()}, (got, wav_route)
        else:
            assert all(c.bpm is None and c.key is None for c in clips)
            assert "tempo_key" not in preparation_rules(cfg)  # stores made before the option keep their units


@pytest.mark.slow
def test_evaluation_scores_clips_against_the_tempo_and_key_their_prompt_asks(tmp_path):
    from musicgen_lora.evaluation.scoring import score_folder

    clips = tmp_path / "clips"
    x, sr = sf.read(REAL / PIECES["guitar_bwv1.6"]["file"], dtype="float32")  # 92 bpm, F major
    prompts = {"base_model": "nylon guitar chorale, 140 bpm, C# major",  # the control: not what it plays
               "final_model": "nylon guitar chorale, 92 bpm, F major",
               "plain": "nylon guitar chorale"}  # names neither: nothing estimated
    for model, prompt in prompts.items():
        (clips / model).mkdir(parents=True)
        sf.write(clips / model / "chorale.wav", x, sr, subtype="PCM_16")
        (clips / model / "chorale.json").write_text(json.dumps({"prompt": prompt, "prompt_id": "chorale"}))
    summary = score_folder(clips, tmp_path / "scored")
    final, base, plain = (summary["models"][m] for m in ("final_model", "base_model", "plain"))
    assert "tempo 1/1 as asked" in final["verdict"] and "key 1/1 as asked" in final["verdict"], final["verdict"]
    assert (final["tempo_right"], final["key_exact"]) == (1, 1)
    assert "tempo 0/1 as asked" in base["verdict"] and "key 0/1 as asked" in base["verdict"], base["verdict"]
    assert "tempo_asked" not in plain and "as asked" not in plain["verdict"]
    rows = [json.loads(line) for line in (tmp_path / "scored" / "comparison_results.jsonl").read_text().splitlines()]
    final_row = next(r for r in rows if r["model"] == "final_model")
    assert final_row["metrics"]["asked_key"] == "F major" and final_row["metrics"]["key_match"] == "exact"
    report = (tmp_path / "scored" / "report.html").read_text()
    assert "asked 92 bpm" in report
    # the models table ranks them: a column each, the right model's share 1, the control's 0
    assert (final["tempo_as_asked"], final["key_as_asked"], base["tempo_as_asked"], base["key_as_asked"]) == \
        (1.0, 1.0, 0.0, 0.0)
    assert "tempo as asked" in report and "key as asked" in report
