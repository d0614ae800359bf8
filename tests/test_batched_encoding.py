"""Batched EnCodec encoding (encoding.encode_batched) gives exactly the one-at-a-time codes
(modeling.encode_pieces), for mono and stereo checkpoints, through the code cache too, and holds at
most batch_size pieces however long a clip is.

Real audio files (musicgen_lora.evaluation.signals, written with soundfile, one at 44.1 kHz so it is
resampled) read through audio.AudioPieces, on the offline tiny checkpoints loaded with from_pretrained.
"""

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_lora.audio.reader import MUSICGEN_HOP_LENGTH, MUSICGEN_SAMPLE_RATE, AudioPieces, piece_samples
from musicgen_lora.data.metadata import Clip
from musicgen_lora.data.store_update import fill_store
from musicgen_lora.evaluation.signals import drum_loop, varied_beat
from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
from musicgen_lora.model.codec import encode_pieces
from musicgen_lora.model.encoding import encode_batched

SR = MUSICGEN_SAMPLE_RATE
PIECE = piece_samples(SR, MUSICGEN_HOP_LENGTH)  # the tiny models' piece: 30 s at 32 kHz
# (name, seconds, channels in the file, file rate): lengths that share buckets (15 s twice, the 45 s
# clip's full piece with the exactly-one-piece clip) and odd ones that have no partner.
CLIPS = [("a_15s", 15.0, 1, SR), ("b_7.3s", 7.3, 2, SR), ("c_45s", 45.0, 2, 44100), ("d_15s", 15.0, 2, SR),
         ("e_0.5s", 0.5, 1, SR), ("f_one_piece", PIECE / SR, 1, SR)]


def _audio(seconds, channels, rate, seed):
    """Music-like audio, (samples, channels): a different groove on each channel."""
    left = varied_beat(seconds, rate, bpm=96 + 4 * seed, key=seed, seed=seed)
    if channels == 1:
        return left[:, None]
    return np.stack([left, 0.8 * drum_loop(seconds, rate, bpm=120, seed=seed)], axis=1)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for seed, (name, seconds, channels, rate) in enumerate(CLIPS):
        paths.append(folder / f"{name}.wav")
        sf.write(paths[-1], _audio(seconds, channels, rate, seed), rate, subtype="PCM_16")
    return paths


@pytest.fixture(scope="module", params=["mono", "stereo"])
def model(request):
    folder = request.getfixturevalue("tiny_model_dir" if request.param == "mono" else "tiny_stereo_model_dir")
    return load_model_and_processor(str(folder))[0]


def _pieces(model, path) -> AudioPieces:
    info = model_info(model)
    return AudioPieces(path, info["sample_rate"], piece_samples(info["sample_rate"], info["hop_length"]),
                       info["audio_channels"])


def _read(audio: AudioPieces):
    return (audio.read(j) for j in range(audio.num_pieces))


@pytest.fixture(scope="module")
def one_at_a_time(model, audio_files):
    return [encode_pieces(model, _read(_pieces(model, path))).cpu() for path in audio_files]


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_codes_equal_one_at_a_time(model, audio_files, one_at_a_time, batch_size):
    pieces = {path.stem: _pieces(model, path) for path in audio_files}
    assert [p.num_pieces for p in pieces.values()] == [1, 1, 2, 1, 1, 1]  # c_45s: a full piece + 15 s
    assert pieces["f_one_piece"].num_samples == PIECE and pieces["c_45s"].length(0) == PIECE

    out = list(encode_batched(model, ((name, _read(p)) for name, p in pieces.items()), batch_size=batch_size))

    assert [key for key, _ in out] == list(pieces)  # input order
    k = model_info(model)["num_codebooks"]
    for (name, codes), expected in zip(out, one_at_a_time):
        assert codes.dtype == torch.long and codes.device.type == "cpu" and codes.shape[0] == k, name
        assert torch.equal(codes, expected), name
    # The clips differ, so equal codes are not a codec that says the same thing for everything.
    assert not torch.equal(out[0][1], out[3][1])


@pytest.mark.slow
def test_codec_is_left_as_it_was(model, audio_files):
    """The LSTMs run on two rows only inside encode_audio (modeling._lstms_on_two_rows)."""
    list(encode_batched(model, [("x", _read(_pieces(model, audio_files[4])))]))
    lstms = [m for m in model.audio_encoder.modules() if isinstance(m, torch.nn.LSTM)]
    assert lstms and all("forward" not in vars(m) for m in lstms)


def test_an_empty_clip_is_an_error(model):
    with pytest.raises(ValueError, match="no pieces"):
        list(encode_batched(model, [("empty", [])]))


@pytest.mark.slow
def test_store_filled_batched_equals_store_filled_one_at_a_time(model, audio_files, tmp_path):
    copy = audio_files[0].with_name("a_15s_copy.wav")  # the same audio twice: one row, encoded once
    copy.write_bytes(audio_files[0].read_bytes())
    clips = {"train": [Clip(p, "x", "train") for p in [*audio_files, copy]]}

    batched, b_clips, _, stats = fill_store(tmp_path / "batched", model, clips, False, progress=False, batch_size=3)
    assert stats["encoded"] == len(audio_files)
    single, s_clips, _, _ = fill_store(tmp_path / "single", model, clips, False, progress=False, batch_size=1)
    for b, s in zip(b_clips["train"], s_clips["train"]):
        assert batched.content(b.store_index) == single.content(s.store_index)  # the same content keys
        assert torch.equal(batched.codes(b.store_index), single.codes(s.store_index))
        assert batched.num_samples(b.store_index) == single.num_samples(s.store_index)
    assert b_clips["train"][-1].store_index == b_clips["train"][0].store_index
    assert fill_store(tmp_path / "batched", model, clips, False, progress=False)[3]["encoded"] == 0


@pytest.mark.slow
def test_a_long_clip_is_never_held_whole(model, monkeypatch):
    """5 minutes of audio (10 pieces) among short clips: the encoder never pulls more than batch_size
    pieces ahead of what it has encoded, and never encodes more than batch_size pieces in one call."""
    info = model_info(model)
    channels, piece = info["audio_channels"], piece_samples(info["sample_rate"], info["hop_length"])
    batch_size, counts = 3, {"pulled": 0, "encoded": 0, "largest_call": 0}
    codec = model.audio_encoder
    real_encode = codec.encode

    def counting_encode(audio, *args, **kwargs):
        pieces = audio.shape[0] // channels
        counts["encoded"] += pieces
        counts["largest_call"] = max(counts["largest_call"], pieces)
        return real_encode(audio, *args, **kwargs)

    def lazy_pieces(seconds, seed, counted=True):
        """A clip's pieces, each made only when the encoder asks for it."""
        total = int(seconds * info["sample_rate"])
        for j, start in enumerate(range(0, total, piece)):
            if counted:
                assert counts["pulled"] - counts["encoded"] < batch_size, "pulled too far ahead of the encoder"
                counts["pulled"] += 1
            rng = np.random.default_rng(seed * 1000 + j)
            yield (0.3 * rng.standard_normal((channels, min(piece, total - start)))).astype(np.float32)

    lengths = {"long": 300.0, "short_1": 15.0, "odd": 2.3, "short_2": 15.0}
    monkeypatch.setattr(codec, "encode", counting_encode)
    out = dict(encode_batched(model, ((name, lazy_pieces(s, i)) for i, (name, s) in enumerate(lengths.items())),
                              batch_size=batch_size))
    monkeypatch.undo()

    assert list(out) == list(lengths) and counts["pulled"] == counts["encoded"] == 13
    assert counts["largest_call"] == batch_size
    for i, (name, seconds) in enumerate(lengths.items()):
        assert torch.equal(out[name], encode_pieces(model, lazy_pieces(seconds, i, counted=False)).cpu()), name
