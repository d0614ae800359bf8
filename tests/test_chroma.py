"""The melody chroma (musicgen_lora/audio/chroma.py) against an independent implementation of the algorithm
transformers' MusicgenMelodyFeatureExtractor documents. That extractor needs torchaudio, which cannot
be installed beside the pinned torch here, so the reference is librosa's STFT and chroma filters."""
import numpy as np
import pytest
import torch

from musicgen_lora.audio.chroma import HOP_LENGTH, N_FFT, chroma_features
from musicgen_lora.audio.librosa_import import load_librosa

# librosa's numba code loads under the toolkit's lock: two test workers compiling it at once into an
# empty cache can poison it (audio/librosa_import.py)
librosa = load_librosa()

SR = 32000


def reference_chroma(wav: np.ndarray, sr: int = SR) -> np.ndarray:
    """(frames, 12) max-normalised chroma: librosa.stft (periodic Hann, centred, reflect padding),
    power / sum(window^2) (torchaudio's normalized=True), librosa's chroma filters, max-normalised."""
    if len(wav) < N_FFT:
        pad = N_FFT - len(wav)
        wav = np.pad(wav, (pad // 2, pad // 2 + pad % 2))
    stft = librosa.stft(wav.astype(np.float64), n_fft=N_FFT, hop_length=HOP_LENGTH, win_length=N_FFT,
                        window="hann", center=True, pad_mode="reflect")
    window = librosa.filters.get_window("hann", N_FFT, fftbins=True)
    power = np.abs(stft) ** 2 / np.sum(window ** 2)
    filters = librosa.filters.chroma(sr=sr, n_fft=N_FFT, tuning=0, n_chroma=12, base_c=True, octwidth=2,
                                     ctroct=5.0, norm=2)
    raw = filters @ power
    return (raw / np.maximum(np.abs(raw).max(axis=0, keepdims=True), 1e-6)).T


def melody(notes, seconds_per_note=0.5, sr=SR, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds_per_note * sr)) / sr
    parts = [np.sin(2 * np.pi * 440 * 2 ** ((n - 9) / 12) * t) * np.hanning(len(t)) for n in notes]
    return (0.5 * np.concatenate(parts) + 0.01 * rng.standard_normal(len(t) * len(notes))).astype(np.float32)


@pytest.mark.parametrize("seconds", [0.3, 4.0, 11.7])
def test_chroma_agrees_with_the_documented_algorithm(seconds):
    wav = melody([0, 4, 7, 11, 2, 5, 9] * 4)[: int(seconds * SR)]
    ours = chroma_features(wav, SR, one_hot=False)[0].numpy()
    ref = reference_chroma(wav)
    assert ours.shape == ref.shape == (1 + max(len(wav), N_FFT) // HOP_LENGTH, 12)
    assert np.allclose(ours, ref, atol=1e-3)
    one_hot = chroma_features(wav, SR)[0].numpy()
    assert (one_hot.sum(-1) == 1).all()
    assert (one_hot.argmax(-1) == ref.argmax(-1)).mean() == 1.0


def test_chroma_follows_the_notes():
    """A C major arpeggio lands on pitch classes C, E, G (0, 4, 7), one note per 0.5 s (~4 frames)."""
    wav = melody([0, 4, 7] * 3, seconds_per_note=1.0)
    classes = chroma_features(wav, SR)[0].argmax(-1).numpy()
    assert set(classes[2:-2].tolist()) <= {0, 4, 7}
    assert {0, 4, 7} <= set(classes.tolist())


@pytest.mark.parametrize("stereo", [False, True], ids=["melody", "stereo-melody"])
def test_offline_melody_checkpoint_takes_our_chroma(stereo, tmp_path):
    """make_tiny_model.py --melody: a MusicGen-Melody checkpoint that loads through from_pretrained as
    a real one does (its processor needs torchaudio: only the tokenizer loads here), and whose prefix
    takes chroma_features' output -- two melodies give two different generations."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, MusicgenMelodyForConditionalGeneration

    from conftest import run_script

    out = tmp_path / "melody"
    run_script("make_tiny_model.py", "--output_dir", out, "--melody", *(["--stereo"] if stereo else []))
    assert AutoConfig.from_pretrained(out).model_type == "musicgen_melody"
    model = MusicgenMelodyForConditionalGeneration.from_pretrained(out).eval()
    assert model.decoder.config.num_codebooks == (8 if stereo else 4)
    tokens = AutoTokenizer.from_pretrained(out)(["lo-fi beat"], return_tensors="pt")
    k = model.decoder.config.num_codebooks
    first_step = []
    for notes in ([0, 4, 7] * 4, [1, 6, 10] * 4):
        chroma = chroma_features(melody(notes), SR)
        with torch.no_grad():
            gen = model.generate(**tokens, input_features=chroma, do_sample=False, guidance_scale=1,
                                 max_new_tokens=2, output_scores=True, return_dict_in_generate=True)
            forward = model(**tokens, input_features=chroma,
                            decoder_input_ids=torch.full((k, 1), model.config.decoder_start_token_id)).logits[:, -1]
        assert torch.allclose(gen.scores[0], forward, atol=1e-5)  # generate() conditions on this melody
        first_step.append(forward)
    # ... and the melody changes what it predicts (transformers issue 45647: melody generate ignoring
    # input_features). Compared on scores: a random tiny model's argmax barely depends on its prefix
    # (measured: two melodies, or two texts, give the same greedy codes; the scores differ by ~0.4%).
    assert not torch.allclose(first_step[0], first_step[1], atol=1e-4)


@pytest.mark.parametrize("stereo", [False, True], ids=["melody", "stereo-melody"])
def test_teacher_forcing_matches_generation_with_a_melody(stereo, tmp_path):
    """The one label function on a decoder-only model with a [chroma, text] prefix: with a melody for
    one prompt and the null melody for the other, labels from greedy generation are reproduced at
    100% of audio positions (the prefix positions are sliced off); a wrong layout is not."""
    from musicgen_lora.generation.generate import label_agreement
    from musicgen_lora.model.checkpoint import load_model_and_processor, model_info

    from conftest import run_script

    out = tmp_path / "melody"
    run_script("make_tiny_model.py", "--output_dir", out, "--melody", *(["--stereo"] if stereo else []))
    model, processor = load_model_and_processor(str(out))
    model.eval()
    info = model_info(model)
    prompts = ["lo-fi hip hop beat", "dark trap beat with 808"]
    chroma = [chroma_features(melody([0, 4, 7] * 4), SR)[0], None]
    assert label_agreement(model, processor, prompts, chroma=chroma) == 1.0
    wrong = 1 if info["audio_channels"] > 1 else info["num_codebooks"]  # stereo with mono delays; mono undelayed
    assert label_agreement(model, processor, prompts, audio_channels=wrong, chroma=chroma) < 0.9


def test_chroma_cosine_ranks_itself_transposed_and_noise():
    """audiocraft's chroma_cosinesim on constructed signals: a melody against itself (1.0), against a
    copy a tritone away, and against noise."""
    from musicgen_lora.audio.chroma import chroma_cosine

    tune = melody([0, 4, 7, 11, 2, 5, 9] * 3)
    same = chroma_cosine(tune, tune, SR)
    louder_stereo = chroma_cosine(np.stack([0.5 * tune, 0.5 * tune], axis=1), tune, SR)
    transposed = chroma_cosine(melody([6, 10, 1, 5, 8, 11, 3] * 3), tune, SR)
    noise = chroma_cosine(np.random.default_rng(1).standard_normal(len(tune)).astype(np.float32), tune, SR)
    assert same == pytest.approx(1.0, abs=1e-6) and louder_stereo == pytest.approx(1.0, abs=1e-6)
    assert transposed < 0.5 and noise < 0.8 and transposed < same and noise < same, (transposed, noise)


@pytest.mark.parametrize("seconds", [0.2, 3.0, 9.5])
def test_a_window_chroma_is_the_whole_clip_chroma_cropped(seconds, tmp_path):
    """chroma_frames computes a window's frames from the samples they cover (reflect padding at the
    clip's ends, zero padding to n_fft for short clips) and gets exactly the whole clip's frames, read
    piece by piece from a file at another rate: the cached (whole clip, cropped) and uncached (window
    only) training paths cannot disagree."""
    import soundfile as sf

    from musicgen_lora.audio.chroma import file_chroma, window_frames
    from musicgen_lora.audio.reader import load_audio

    wav = melody([0, 4, 7, 11, 2, 5, 9, 1, 6, 10] * 2, seconds_per_note=0.5, sr=44100)[: int(seconds * 44100)]
    path = tmp_path / "tune.wav"
    sf.write(path, np.stack([wav, 0.5 * wav], axis=1), 44100)
    whole = chroma_features(load_audio(path, SR), SR, one_hot=False)[0]
    piece = 2 * SR  # pieces shorter than the windows: frames straddle piece boundaries
    from_file = file_chroma(path, SR, piece)
    assert from_file.shape == whole.shape and (from_file.argmax(-1) == whole.argmax(-1)).all()
    for start in [0, 640, 640 * 7, 640 * 130, int(seconds * SR) - 640 * 3]:
        first, count = window_frames(max(start, 0), 2 * SR)
        window = file_chroma(path, SR, piece, first, count)
        assert torch.equal(window, from_file[first:first + count]), start
        assert count == 1 + 2 * SR // HOP_LENGTH  # what the extractor gives a 2 s melody
