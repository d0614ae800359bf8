"""The delay-pattern labels and padding masks: the one thing training must get exactly right."""
import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_lora.audio.codes import (
    build_delay_pattern_labels,
    codebook_delays,
    interleave_channels,
    split_channels,
    valid_frames_for_samples,
)
from musicgen_lora.data.dataset import Collator, MusicDataset
from musicgen_lora.data.metadata import read_metadata
from musicgen_lora.generation.generate import generate_audio, label_agreement
from musicgen_lora.generation.sampling import GREEDY, GenerationSettings
from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
from musicgen_lora.model.loss import labels_for_batch


def test_delay_layout_small_tensor():
    codes = torch.arange(1, 13).reshape(1, 3, 4)  # K=3 codebooks, T=4 frames
    labels = build_delay_pattern_labels(codes)
    assert labels.shape == (1, 6, 3)
    for k in range(3):
        for t in range(4):
            assert labels[0, t + k, k] == codes[0, k, t]
        # everything outside the delayed diagonal band is ignored
        assert (labels[0, :k, k] == -100).all() and (labels[0, k + 4:, k] == -100).all()


def test_masking_exact_positions_for_short_clip():
    codes = torch.randint(0, 50, (2, 4, 10))
    labels = build_delay_pattern_labels(codes, torch.tensor([10, 6]))
    assert (labels[0] != -100).sum() == 4 * 10
    # second clip: frames 6..9 are padding -> exactly 4 codebooks x 4 frames more masked
    expected = torch.full((13, 4), -100)
    for k in range(4):
        expected[k:k + 6, k] = codes[1, k, :6]
    assert torch.equal(labels[1], expected)


def test_padded_clip_through_collator_masks_every_padded_frame(tiny_model_dir, tmp_path):
    model, processor = load_model_and_processor(str(tiny_model_dir))
    info = model_info(model)
    sr, hop = info["sample_rate"], info["hop_length"]
    # 2.5 s of real audio in a 4 s window: frames from 125 on cover padding.
    wav = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(2.5 * sr)) / sr)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wav, sr)
    (tmp_path / "metadata.json").write_text('{"train": [{"audio": "a.wav", "description": "sine"}]}')
    clips = read_metadata(tmp_path)["train"]
    ds = MusicDataset(clips, sr, 4.0, train=False, hop_length=hop, audio_channels=1)
    batch = Collator(processor, 4 * sr, hop)([ds[0]])
    labels = labels_for_batch(model, batch)
    total_frames = 4 * sr // hop  # 200
    valid = valid_frames_for_samples(int(2.5 * sr), hop)  # 125
    k = info["num_codebooks"]
    assert labels.shape == (1, total_frames + k - 1, k)
    assert int((labels != -100).sum()) == valid * k
    for cb in range(k):
        col = labels[0, :, cb]
        assert (col[cb:cb + valid] != -100).all()
        assert (col[cb + valid:] == -100).all() and (col[:cb] == -100).all()


LAYOUTS = [(1, 1), (4, 1), (8, 1), (32, 1), (8, 2), (4, 2), (32, 2)]  # (codebooks K, audio channels C)


@pytest.mark.parametrize("k,channels", LAYOUTS, ids=[f"K{k}-C{c}" for k, c in LAYOUTS])
@pytest.mark.parametrize("t", [0, 1, 2, 7, 50])
@pytest.mark.parametrize("batch", [1, 3])
def test_delay_pattern_invariants(k, channels, t, batch):
    """The label builder's invariants over shapes, as audiocraft tests its codebook patterns:
    (B, T + K/C - 1, K); row k holds its codes exactly once each, in order, delayed by k // C; every
    other position is -100; masking frames past a row's valid count removes exactly those frames."""
    gen = torch.Generator().manual_seed(k * 1000 + t * 10 + channels)
    codes = torch.randint(0, 2048, (batch, k, t), generator=gen)
    delays = codebook_delays(k, channels)
    assert delays == [row // channels for row in range(k)]
    labels = build_delay_pattern_labels(codes, audio_channels=channels)
    assert labels.shape == (batch, t + delays[-1], k)
    for row, d in enumerate(delays):
        assert torch.equal(labels[:, d:d + t, row], codes[:, row, :])
        assert (labels[:, :d, row] == -100).all() and (labels[:, d + t:, row] == -100).all()
    assert int((labels != -100).sum()) == batch * k * t
    # Padding: each row of the batch keeps exactly its valid frames, shifted like the rest.
    valid = torch.tensor([min(t, v) for v in (t, t // 2, 0)][:batch])
    masked = build_delay_pattern_labels(codes, valid, audio_channels=channels)
    for b in range(batch):
        n = int(valid[b])
        for row, d in enumerate(delays):
            assert torch.equal(masked[b, d:d + n, row], codes[b, row, :n])
            assert (masked[b, d + n:, row] == -100).all() and (masked[b, :d, row] == -100).all()
    assert int((masked != -100).sum()) == int(valid.sum()) * k


@pytest.mark.parametrize("k,channels", [(3, 2), (4, 3), (4, 0)])
def test_a_layout_the_channels_cannot_split_is_refused(k, channels):
    with pytest.raises(ValueError):
        build_delay_pattern_labels(torch.zeros(1, k, 5, dtype=torch.long), audio_channels=channels)


@pytest.mark.parametrize("channels", [1, 2], ids=["mono", "stereo"])
def test_delay_layout_per_channel(channels):
    """Row k is delayed by k // channels: stereo rows 2c (left) and 2c + 1 (right) both by c."""
    k, t = 4 * channels, 5
    codes = torch.arange(k * t).reshape(k, t)
    labels = build_delay_pattern_labels(codes, audio_channels=channels)
    assert labels.shape == (t + k // channels - 1, k)
    for row in range(k):
        d = row // channels
        assert torch.equal(labels[d:d + t, row], codes[row])
        assert (labels[:d, row] == -100).all() and (labels[d + t:, row] == -100).all()
    assert codebook_delays(k, channels) == ([0, 1, 2, 3] if channels == 1 else [0, 0, 1, 1, 2, 2, 3, 3])


def test_channels_interleave_and_split_round_trip():
    left, right = torch.arange(12).reshape(4, 3), 100 + torch.arange(12).reshape(4, 3)
    both = interleave_channels([left, right])
    assert both[:, 0].tolist() == [0, 100, 3, 103, 6, 106, 9, 109]  # [L0, R0, L1, R1, ...]
    assert all(torch.equal(a, b) for a, b in zip(split_channels(both, 2), [left, right]))


@pytest.mark.parametrize("stereo", [False, True], ids=["mono", "stereo"])
def test_teacher_forcing_matches_greedy_generation(stereo, tiny_model_dir, tiny_stereo_model_dir):
    """Labels built from generated codes reproduce generation at 100% of positions -- and a wrong
    layout does not: un-delayed labels (what a naive trainer uses) on mono, the mono delays on stereo."""
    model, processor = load_model_and_processor(str(tiny_stereo_model_dir if stereo else tiny_model_dir))
    model.eval()
    channels = model_info(model)["audio_channels"]
    assert channels == (2 if stereo else 1)
    prompts = ["lo-fi hip hop beat", "dark trap beat with 808"]
    how = GenerationSettings(30 / model_info(model)["frame_rate"], GREEDY)
    _, codes = generate_audio(model, processor, prompts, how, progress=False, return_codes=True)
    codes = torch.stack(codes)
    assert codes.shape[1:] == (4 * channels, 30)
    labels = build_delay_pattern_labels(codes, audio_channels=channels)
    assert int((labels != -100).sum()) == codes.numel()  # every generated token is a label, once
    assert label_agreement(model, processor, prompts, 30) == 1.0
    if stereo:
        left, right = split_channels(codes, 2)
        assert (left != right).float().mean() > 0.5  # the channels really differ: the test can tell L from R
        control = label_agreement(model, processor, prompts, 30, audio_channels=1)  # mono delays 0..7
    else:
        control = label_agreement(model, processor, prompts, 30, audio_channels=4)  # 4 channels: no delay at all
    assert control < 0.9, control
