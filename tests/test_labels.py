"""The delay-pattern labels and padding masks: the one thing training must get exactly right."""
import numpy as np
import soundfile as sf
import torch

from musicgen_lora.codes import build_delay_pattern_labels, valid_frames_for_samples
from musicgen_lora.data.dataset import Collator, MusicDataset
from musicgen_lora.data.metadata import read_metadata
from musicgen_lora.modeling import forward_logits, labels_for_batch, load_model_and_processor, model_info


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
    ds = MusicDataset(clips, sr, 4.0, train=False, hop_length=hop)
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


def test_teacher_forcing_matches_greedy_generation(tiny_model_dir):
    """Labels built by dataset.py from generated codes reproduce generation at 100% of positions."""
    model, processor = load_model_and_processor(str(tiny_model_dir))
    model.eval()
    captured = {}
    decode = model.audio_encoder.decode

    def capture(codes, *a, **kw):
        captured["codes"] = codes.clone()
        return decode(codes, *a, **kw)

    model.audio_encoder.decode = capture
    inputs = processor(text=["lo-fi hip hop beat", "dark trap beat with 808"], padding=True, return_tensors="pt")
    with torch.no_grad():
        model.generate(**inputs, do_sample=False, guidance_scale=1, max_new_tokens=40)
    codes = captured["codes"][0]  # (B, K, T)
    assert codes.shape[-1] == 40 - model_info(model)["num_codebooks"] + 1
    labels = build_delay_pattern_labels(codes)
    with torch.no_grad():
        logits = forward_logits(model, dict(inputs), labels)
    b, s, k = labels.shape
    pred = logits.reshape(b, k, s, -1).argmax(-1).permute(0, 2, 1)
    valid = labels != -100
    assert valid.sum() == b * k * codes.shape[-1]
    assert torch.equal(pred[valid], labels[valid])
    # Un-delayed labels (what a naive trainer uses) do not line up.
    naive = torch.full_like(labels, -100)
    naive[:, : codes.shape[-1], :] = codes.permute(0, 2, 1)
    with torch.no_grad():
        pred_naive = forward_logits(model, dict(inputs), naive).reshape(b, k, s, -1).argmax(-1).permute(0, 2, 1)
    m = naive != -100
    assert (pred_naive[m] == naive[m]).float().mean() < 0.9
