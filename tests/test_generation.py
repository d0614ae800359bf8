"""inference_lora.py and the shared generation function, on the tiny offline MusicGen."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import MusicgenForConditionalGeneration

from musicgen_lora.core.common import UserError
from musicgen_lora.generation.generate import generate_audio, max_new_tokens_for
from musicgen_lora.generation.prompts import load_prompts
from musicgen_lora.generation.sampling import GenerationSettings, SamplingSettings
from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
from musicgen_lora.model.lora import apply_lora, load_adapter

from conftest import assert_one_line_error, run_script


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model_and_processor(str(tiny_model_dir))


def test_tokens_for_duration(tiny):
    model, _ = tiny
    info = model_info(model)
    # The delay pattern costs K - 1 steps: 15 s at 50 Hz = 750 frames = 753 new tokens with 4 codebooks.
    assert max_new_tokens_for(15.0, info) == 753
    assert max_new_tokens_for(1.0, info) == 53


def test_seeded_per_prompt_independent_of_batching(tiny):
    model, processor = tiny
    prompts = ["trap beat with 808", "lofi piano chill", "jazz trumpet", "techno kick"]
    batched = generate_audio(model, processor, prompts, GenerationSettings(0.6, batch_size=4), seed=5, progress=False)
    single = generate_audio(model, processor, prompts, GenerationSettings(0.6, batch_size=1), seed=5, progress=False)
    alone = generate_audio(model, processor, prompts[2:3], GenerationSettings(0.6, batch_size=1), seed=5,
                           progress=False)
    other = generate_audio(model, processor, prompts, GenerationSettings(0.6, batch_size=4), seed=6, progress=False)
    assert all(a.dtype == np.float32 and a.shape == (int(0.6 * 32000),) for a in batched)
    # A clip depends on its prompt and seed, not on its batch (only float rounding differs).
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(alone[0], batched[2], atol=1e-5)
    # ...and the seed matters, so the checks above can fail.
    assert all(np.abs(a - b).max() > 1e-5 for a, b in zip(batched, other))
    # Sampling with top_k=1 is argmax decoding: the guided mix matches transformers' own CFG path.
    greedy = generate_audio(model, processor, prompts[:2], GenerationSettings(0.4, SamplingSettings(greedy=True)),
                            progress=False)
    top1 = generate_audio(model, processor, prompts[:2], GenerationSettings(0.4, SamplingSettings(top_k=1)), seed=9,
                          progress=False)
    for a, b in zip(greedy, top1):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_inference_writes_wavs_and_sidecars(tiny_model_dir, tmp_path):
    out = tmp_path / "gen"
    run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts", "Trap beat: 808s & hats!",
               "--num_samples", 2, "--batch_size", 2, "--duration", 15, "--seed", 11, "--output_dir", out,
               "--no_progress")
    wavs = sorted(out.glob("*.wav"))
    assert [w.name for w in wavs] == ["00_trap-beat-808s-hats_s0.wav", "00_trap-beat-808s-hats_s1.wav"]
    for j, wav in enumerate(wavs):
        info = sf.info(str(wav))
        assert info.samplerate == 32000 and info.subtype == "PCM_16" and info.channels == 1
        assert abs(info.frames - 15 * 32000) <= 640  # within one 20 ms frame (here: exact)
        side = json.loads(wav.with_suffix(".json").read_text())
        assert side["prompt"] == "Trap beat: 808s & hats!" and side["seed"] == 11 + j and side["adapter"] is None
        for key in ("guidance_scale", "temperature", "top_k", "top_p", "greedy", "duration", "base_model",
                    "wall_seconds", "batch_size"):
            assert key in side, key
        assert side["guidance_scale"] == 3.0 and side["top_k"] == 250
    a, b = (sf.read(str(w))[0] for w in wavs)
    assert np.abs(a - b).max() > 0  # two samples, two seeds
    # Refuses to overwrite earlier clips without --overwrite.
    again = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts", "Trap beat: 808s & hats!",
                       "--num_samples", 2, "--duration", 1, "--output_dir", out, check=False)
    assert_one_line_error(again, "already exists", "--overwrite")
    assert sf.info(str(wavs[0])).frames == 15 * 32000


def test_fresh_adapter_gives_base_audio_and_trained_one_differs(tiny_model_dir, trained_run, tmp_path):
    run, _ = trained_run
    model, processor = load_model_and_processor(str(tiny_model_dir))
    apply_lora(model, 4, 8, 0.0).save_pretrained(str(tmp_path / "fresh"))  # LoRA B starts at zero, saved by PEFT
    prompts = ["dark trap 808", "lofi chill"]

    def gen(adapter):
        base, proc = load_model_and_processor(str(tiny_model_dir))
        m = load_adapter(base, str(adapter)) if adapter else base
        return generate_audio(m, proc, prompts, GenerationSettings(1.0, batch_size=2), seed=3, progress=False)

    base, fresh, final = gen(None), gen(tmp_path / "fresh"), gen(run / "final_model")
    for b, f, t in zip(base, fresh, final):
        np.testing.assert_array_equal(b, f)
        assert np.abs(b - t).max() > 0


def test_merge_writes_a_plain_transformers_model(tiny_model_dir, trained_run, tmp_path):
    run, _ = trained_run
    run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--lora_model_path", run / "final_model",
               "--merge", "--output_dir", tmp_path / "merged")
    merged = MusicgenForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base, processor = load_model_and_processor(str(tiny_model_dir))
    adapted = load_adapter(base, str(run / "final_model")).eval()
    inputs = processor(text=["trap beat"], return_tensors="pt")
    dec = torch.randint(0, 64, (4, 12))
    with torch.no_grad():
        want = adapted(**inputs, decoder_input_ids=dec).logits
        got = merged(**inputs, decoder_input_ids=dec).logits
        with adapted.disable_adapter():
            plain = adapted(**inputs, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (want - plain).abs().max() > 1e-3  # the adapter changes the logits, so the merge mattered


def test_adapter_for_another_architecture_is_a_clear_error(tiny_model_dir, tmp_path):
    config = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir).config
    config.decoder.hidden_size = 32  # another decoder width: same module names, other shapes
    other = MusicgenForConditionalGeneration(config)
    apply_lora(other, 4, 8, 0.0).save_pretrained(str(tmp_path / "other_adapter"))
    proc = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--lora_model_path",
                      tmp_path / "other_adapter", "--prompts", "x", "--duration", 0.5, "--output_dir", tmp_path / "o",
                      check=False)
    assert_one_line_error(proc, str(tmp_path / "other_adapter"), "does not fit this base model")
    assert not (tmp_path / "o").exists()


def test_prompt_files(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(["lofi beat", {"prompt": "trap 808", "id": "trap", "seed": 7}]))
    prompts = load_prompts(f, ["extra one"])
    assert [(p.id, p.text, p.seed) for p in prompts] == [("00_lofi-beat", "lofi beat", None), ("trap", "trap 808", 7),
                                                         ("02_extra-one", "extra one", None)]
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert [p.text for p in load_prompts(tmp_path / "p.txt")] == ["one", "two"]
    for bad, needle in (("[]", "empty"), ('[{"id": "x"}]', "no prompt text"), ('{"a": 1}', "JSON list"),
                        ('["a", {"prompt": "b", "seed": "x"}]', "whole number"), ("[1]", "string")):
        f.write_text(bad)
        with pytest.raises(UserError, match=needle):
            load_prompts(f)
    with pytest.raises(UserError, match="not found"):
        load_prompts(tmp_path / "missing.json")


def test_a_window_longer_than_the_model_holds_is_refused(tiny_model_dir, tmp_path):
    """A long --duration is generated in windows (tests/test_long_generation.py); one window is what
    the model's positions hold (1024 on the tiny model: 20.4 s)."""
    proc = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts", "x", "--duration", 60,
                      "--window_seconds", 25, "--output_dir", tmp_path / "o", check=False)
    assert_one_line_error(proc, "--window_seconds 25", "at most 20.4 s")


def test_guidance_at_or_below_one_is_really_off(tiny, tiny_model_dir, tmp_path):
    """transformers refills a None guidance_scale from the checkpoint (3.0): 1 must mean off --
    B*K decoder rows, not the 2*B*K of classifier-free guidance -- through the project's function."""
    from musicgen_lora.generation.generate import generation_config_for
    from musicgen_lora.generation.sampling import SamplingSettings

    model, processor = tiny
    rows = []
    hook = model.decoder.register_forward_pre_hook(lambda m, args, kw: rows.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
    try:
        for scale, want in ((0.0, 2 * 4), (0.5, 2 * 4), (1.0, 2 * 4), (3.0, 2 * 2 * 4)):
            rows.clear()
            generate_audio(model, processor, ["trap beat", "lofi"],
                           GenerationSettings(0.2, SamplingSettings(guidance_scale=scale, greedy=True)),
                           progress=False)
            assert set(rows) == {want}, (scale, rows)
    finally:
        hook.remove()
    cfg = generation_config_for(model, SamplingSettings(guidance_scale=1.0), 1.0)
    for key in ("guidance_scale", "temperature", "top_k", "top_p", "max_new_tokens", "min_length"):
        assert getattr(cfg, key) is not None, key
    proc = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts", "x", "--duration", 0.3,
                      "--guidance_scale", 1, "--greedy", "--output_dir", tmp_path / "g", "--no_progress")
    side = json.loads((tmp_path / "g" / "00_x.json").read_text())
    assert side["guidance_scale"] == 1.0 and side["greedy"] is True and "guidance 1" in proc.stderr
