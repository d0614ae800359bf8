"""Music longer than one window: windowed continuation (generation.plan_windows, generate_audio's
windows and audio prompts), through the library and inference_lora.py / evaluate.py, on the tiny
offline MusicGen (its positions hold 20.4 s; the tests use 2 s windows to stay fast)."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_lora.evaluation.scoring import score_windows, scored_spans
from musicgen_lora.evaluation.signals import chord_with_beat
from musicgen_lora.generation.generate import Window, generate_audio, melody_from, plan_windows
from musicgen_lora.generation.sampling import GREEDY, GenerationSettings, SamplingSettings, WindowPlan
from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
from musicgen_lora.model.codec import encode_channels

from conftest import assert_one_line_error, run_script


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_processor(str(tiny_model_dir))


@pytest.mark.parametrize("total", [1, 99, 100, 101, 250, 3000])
@pytest.mark.parametrize("window,overlap", [(100, 40), (100, 1), (100, 99), (1500, 600)])
@pytest.mark.parametrize("prompt", [0, 25])
def test_windows_tile_the_clip(total, window, overlap, prompt):
    if prompt >= total or prompt >= window:
        pytest.skip("the prompt leaves nothing to generate")
    spans = plan_windows(total, window, overlap, prompt)
    assert spans[0] == Window(0, prompt, min(total, window))
    assert spans[-1].stop == total
    for before, w in zip(spans, spans[1:]):
        assert w.start == before.stop  # new audio is contiguous ...
        assert w.start - w.context == overlap  # ... each window prompted with the last `overlap` frames
    assert all(w.stop - w.context <= window and w.stop > w.start for w in spans)  # each fits one call
    assert len(spans) == 1 if total <= window else len(spans) == 1 + -(-(total - window) // (window - overlap))


def test_greedy_continuation_of_its_own_start_reproduces_the_clip(tiny):
    """The audio-prompt path lays the prompt codes into the delay pattern exactly as generation left
    them: greedy decoding prompted with a clip's first second continues into that same clip. (On a
    random model this would pass with the prompt ignored too -- its greedy continuation does not
    depend on the context, measured -- so the proof that the prompt is used is in test_training.py:
    a trained adapter continues each of two clips from its own start.)"""
    model, processor = tiny
    prompts = ["lofi beat with vinyl crackle", "dark trap"]
    for guidance in (1.0, 3.0):
        _, whole = generate_audio(model, processor, prompts,
                                  GenerationSettings(3.0, SamplingSettings(guidance_scale=guidance, greedy=True)),
                                  progress=False, return_codes=True)
        _, again = generate_audio(model, processor, prompts,
                                  GenerationSettings(3.0, SamplingSettings(guidance_scale=guidance, greedy=True)),
                                  progress=False, return_codes=True, audio_prompts=[c[:, :50] for c in whole])
        for a, b in zip(whole, again):
            assert a.shape == b.shape == (4, 150)
            assert torch.equal(a, b)


def test_each_window_continues_the_tail_of_the_one_before(tiny):
    """6 s in 2 s windows with 0.5 s overlap (4 windows: 3x the window). Window 1 is a plain 2 s
    clip; window 2 is exactly what the model makes when prompted with window 1's last 0.5 s (so the
    context is really passed, and only that much of it)."""
    model, processor = tiny
    plan = WindowPlan(2.0, 0.5)
    _, (codes,) = generate_audio(model, processor, ["lofi beat"],
                                 GenerationSettings(6.0, GREEDY, plan=plan),
                                 progress=False, return_codes=True)
    _, (first,) = generate_audio(model, processor, ["lofi beat"],
                                 GenerationSettings(2.0, GREEDY),
                                 progress=False, return_codes=True)
    assert codes.shape == (4, 300)
    assert torch.equal(codes[:, :100], first)
    _, (second,) = generate_audio(model, processor, ["lofi beat"],
                                  GenerationSettings(2.0, GREEDY),
                                  progress=False, return_codes=True, audio_prompts=[codes[:, 75:100]])
    assert torch.equal(second[:, :25], codes[:, 75:100])
    assert torch.equal(second[:, 25:], codes[:, 100:175])
    # The control: with no context the second window would have started like the first.
    assert not torch.equal(codes[:, 100:175], first[:, :75])


@pytest.mark.slow
def test_long_generation_is_reproducible_by_seed(tiny):
    model, processor = tiny
    plan = WindowPlan(2.0, 0.5)
    prompts = ["lofi beat", "dark trap"]
    how = GenerationSettings(6.0, plan=plan)
    a, a_codes = generate_audio(model, processor, prompts, how, seed=[1, 2], progress=False, return_codes=True)
    b, b_codes = generate_audio(model, processor, prompts, GenerationSettings(6.0, plan=plan, batch_size=1),
                                seed=[1, 2], progress=False, return_codes=True)
    _, c_codes = generate_audio(model, processor, prompts, how, seed=[3, 2], progress=False, return_codes=True)
    assert all(x.shape == (6 * 32000,) for x in a)
    for x, y in zip(a, b):  # whatever the batch (only float rounding in the codec's batched decode)
        np.testing.assert_allclose(x, y, atol=1e-5)
    assert all(torch.equal(x, y) for x, y in zip(a_codes, b_codes))
    # Another seed, another clip in every window (the random tiny codec makes all codes sound
    # alike, so the codes are compared) ...
    assert all(not torch.equal(a_codes[0][:, s:s + 50], c_codes[0][:, s:s + 50]) for s in (0, 100, 175, 250))
    assert torch.equal(a_codes[1], c_codes[1])  # ... and its batch neighbour untouched


def test_a_continuation_starts_with_its_prompt(tiny, tmp_path):
    model, processor = tiny
    wav = chord_with_beat(3.0)
    prompt = encode_channels(model, torch.from_numpy(wav))[:, :50]
    _, (codes,) = generate_audio(model, processor, ["piano"], GenerationSettings(4.0, plan=WindowPlan(2.0, 0.5)),
                                 progress=False, return_codes=True, audio_prompts=[prompt])
    assert codes.shape == (4, 200) and torch.equal(codes[:, :50], prompt)


def test_melody_windows_hear_the_melody_from_their_start():
    chroma = torch.nn.functional.one_hot(torch.arange(20) % 12, 12).float()  # frame i: pitch class i % 12
    assert melody_from(chroma, 0.0, 32000) is chroma
    shifted = melody_from(chroma, 1.0, 32000)  # 1 s = frame 8 (32000 / 4096 = 7.8 frames per second)
    assert shifted.argmax(-1).tolist()[:3] == [8, 9, 10] and len(shifted) == 20
    assert melody_from(chroma, 3.0, 32000).argmax(-1)[0] == (23 % 20) % 12  # past its end: wraps round
    assert melody_from(None, 5.0, 32000) is None


def test_windowed_generation_on_a_melody_model(tiny_melody_model_dir):
    model, processor = load_model_and_processor(str(tiny_melody_model_dir))
    chroma = torch.nn.functional.one_hot(torch.arange(40) % 12, 12).float()
    out = generate_audio(model, processor, ["lofi"], GenerationSettings(5.0, plan=WindowPlan(2.0, 0.5)), progress=False,
                         chroma=[chroma])
    assert out[0].shape == (5 * 32000,)


def test_stereo_windows(tiny_stereo_model_dir):
    model, processor = load_model_and_processor(str(tiny_stereo_model_dir))
    plan = WindowPlan(2.0, 0.5)
    _, (codes,) = generate_audio(model, processor, ["lofi"],
                                 GenerationSettings(4.0, GREEDY, plan=plan),
                                 progress=False, return_codes=True)
    _, (again,) = generate_audio(model, processor, ["lofi"],
                                 GenerationSettings(4.0, GREEDY, plan=plan),
                                 progress=False, return_codes=True, audio_prompts=[codes[:, :50]])
    assert codes.shape == (8, 200) and model_info(model)["audio_channels"] == 2
    assert torch.equal(codes[:, :100], again[:, :100])  # greedy: the prompted first window repeats the first
    # The control: prompted with the left and right channels swapped, the clip starts with the swapped
    # codes and goes on differently -- a generation ignoring its prompt would repeat `codes`.
    swapped = codes[:, :50].reshape(4, 2, 50).flip(1).reshape(8, 50)
    _, (crossed,) = generate_audio(model, processor, ["lofi"],
                                   GenerationSettings(4.0, GREEDY, plan=plan),
                                   progress=False, return_codes=True, audio_prompts=[swapped])
    assert torch.equal(crossed[:, :50], swapped) and not torch.equal(crossed[:, 50:100], codes[:, 50:100])


@pytest.mark.slow
def test_inference_sixty_seconds_in_windows(tiny_model_dir, tmp_path):
    """inference_lora.py --duration past the window: 3x the window, reproducible by seed, windows recorded."""
    args = ["--base_model_path", tiny_model_dir, "--prompts", "lofi beat", "--duration", 6, "--window_seconds", 2,
            "--window_overlap", 0.5, "--no_progress"]
    proc = run_script("inference_lora.py", *args, "--output_dir", tmp_path / "a")
    assert "6 s in 4 windows (0-2, 2-3.5, 3.5-5, 5-6 s)" in proc.stderr + proc.stdout
    run_script("inference_lora.py", *args, "--output_dir", tmp_path / "b")
    run_script("inference_lora.py", *args, "--seed", 7, "--output_dir", tmp_path / "c")
    a, sr = sf.read(tmp_path / "a" / "00_lofi-beat.wav")
    b, _ = sf.read(tmp_path / "b" / "00_lofi-beat.wav")
    c, _ = sf.read(tmp_path / "c" / "00_lofi-beat.wav")
    assert a.shape == (6 * sr,) and np.array_equal(a, b) and not np.array_equal(a, c)
    side = json.loads((tmp_path / "a" / "00_lofi-beat.json").read_text())
    assert side["windows"] == [[0.0, 2.0], [2.0, 3.5], [3.5, 5.0], [5.0, 6.0]]
    assert (side["window_seconds"], side["window_overlap"]) == (2.0, 0.5)


@pytest.mark.parametrize("flags,needles", [
    (["--window_seconds", 2, "--window_overlap", 2], ["--window_overlap 2", "below the window"]),
    (["--window_seconds", 0.01], ["--window_seconds 0.01", "two frames"]),
])
def test_bad_window_flags_are_one_line(tiny_model_dir, tmp_path, flags, needles):
    proc = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts", "x", "--duration", 6,
                      *flags, "--output_dir", tmp_path / "o", check=False)
    assert_one_line_error(proc, *needles)


@pytest.mark.slow
def test_evaluate_continuation_prompts(tiny_model_dir, example_data_dir, tmp_path):
    """--continuation_prompts: each model continues the first seconds of held-out clips; the real
    continuation is written beside them; long clips are scored per window and marked in the report."""
    out = tmp_path / "eval"
    run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--test_prompts", "lofi beat",
               "--data_dir", example_data_dir, "--continuation_prompts", 2, "--prompt_seconds", 1, "--duration", 8,
               "--window_seconds", 4, "--window_overlap", 1, "--no_progress", "--output_dir", out)
    rows = [json.loads(line) for line in (out / "comparison_results.jsonl").read_text().splitlines()]
    cont = [r for r in rows if r.get("audio_prompt")]
    assert len(rows) == 3 and len(cont) == 2
    descriptions = json.dumps(json.loads((example_data_dir / "metadata.json").read_text()))
    for r in cont:
        assert r["prompt_id"].startswith("continue_0") and r["prompt_seconds"] == 1.0
        real, sr = sf.read(out / r["reference_audio"])
        assert real.shape == (min(8 * sr, len(sf.read(r["audio_prompt"])[0])),)  # the real clip's first 8 s
        assert json.dumps(r["prompt"]) in descriptions  # the held-out clip's own description
        assert r["windows"] == [[0.0, 4.0], [4.0, 7.0], [7.0, 8.0]]
        assert [w["end_s"] for w in r["window_scores"]] == [4.0, 8.0]  # the 1 s tail scored with the window before
    html = (out / "report.html").read_text()
    assert "real continuation" in html and "windows: 0-4 s" in html
    proc = run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--continuation_prompts", 1,
                      "--prompt_seconds", 6, "--duration", 6, "--data_dir", example_data_dir,
                      "--output_dir", tmp_path / "bad", check=False)
    assert_one_line_error(proc, "--prompt_seconds 6", "shorter than --duration")
    proc = run_script("evaluate.py", "--base_model_path", tiny_model_dir, "--continuation_prompts", 1,
                      "--output_dir", tmp_path / "bad2", check=False)
    assert_one_line_error(proc, "--continuation_prompts", "--data_dir")


def test_a_late_collapse_is_flagged_in_its_window():
    """40 s: 34 s of a chord with a beat, then 6 s of digital silence. Over the whole clip silence is
    15% (under the 20% line) -- the whole-clip score still sees the silent tail (metrics.SILENT_TAIL_S),
    since issue 31 -- and the second window (30-40 s) is 60% silent, so the clip is flagged, the window
    that raised it is named, and the onset is in the clip's time."""
    sr = 32000
    wav = np.concatenate([chord_with_beat(34.0, sr), np.zeros(6 * sr, dtype=np.float32)])
    from musicgen_lora.evaluation.metrics import score_clip

    whole = score_clip(wav, sr)
    assert whole["metrics"]["silence_ratio"] < 0.2 and whole["onsets"]["silent"] == pytest.approx(34.0, abs=0.1)
    row = {"windows": [[0.0, 30.0], [30.0, 40.0]], "flags": dict(whole["flags"], silent=False)}  # the window's own
    score_windows(row, wav, sr)
    assert row["flags"]["silent"] and row["flag_windows"]["silent"] == [1]
    assert row["flag_onsets"]["silent"] == pytest.approx(34.0, abs=0.1)  # 30 s + the window's 4 s
    assert not row["window_scores"][0]["flags"].get("silent")
    assert scored_spans([[0, 2]]) == [] and scored_spans([[0, 30], [30, 48], [48, 50]]) == [[0, 30], [30, 50]]


def test_inference_continues_an_audio_prompt(tiny_model_dir, tmp_path):
    sf.write(tmp_path / "start.wav", chord_with_beat(3.0), 32000)
    run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts", "lofi beat", "--duration", 4,
               "--audio_prompt", tmp_path / "start.wav", "--prompt_seconds", 1, "--no_progress",
               "--output_dir", tmp_path / "o")
    side = json.loads((tmp_path / "o" / "00_lofi-beat.json").read_text())
    assert side["audio_prompt"] == str((tmp_path / "start.wav").resolve()) and side["prompt_seconds"] == 1.0
    assert sf.info(tmp_path / "o" / "00_lofi-beat.wav").frames == 4 * 32000
    proc = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts", "x", "--audio_prompt",
                      tmp_path / "missing.wav", "--output_dir", tmp_path / "p", check=False)
    assert_one_line_error(proc, "--audio_prompt", "missing.wav", "not found")
    proc = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts", "x", "--duration", 4,
                      "--audio_prompt", tmp_path / "start.wav", "--prompt_seconds", 3.5, "--output_dir",
                      tmp_path / "q", check=False)
    assert_one_line_error(proc, "--prompt_seconds 3.5", "start.wav", "shorter than")
