"""Precision: which one runs where (precision.py), generation from a merged decoder copy in that
precision (generation.generation_model), and the evidence that lets `auto` pick bf16: held-out loss
within tolerance of fp32, teacher-forcing = greedy agreement unchanged, a bf16 training run whose
validation curve tracks fp32's. On the tiny offline model; the bf16 numerics run everywhere (a CPU
without bf16 instructions emulates them), the CLI training run only where bf16 really runs."""
import json

import pytest
import torch

from musicgen_lora.core import precision as P
from musicgen_lora.evaluation.compare import validation_loader
from musicgen_lora.generation.generate import generate_audio, generation_model, label_agreement
from musicgen_lora.generation.sampling import GenerationSettings
from musicgen_lora.model.checkpoint import load_model_and_processor, unwrap_base
from musicgen_lora.model.lora import apply_lora
from musicgen_lora.model.loss import evaluate_loss, forward_logits

from conftest import assert_one_line_error, run_script

PROMPTS = ["lofi hip hop beat with mellow rhodes", "fast techno with a hard kick"]
# bf16 keeps 8 bits of mantissa: a held-out loss over thousands of tokens moves far less than that.
LOSS_TOLERANCE = 0.005  # relative


@pytest.mark.parametrize("asked,has_bf16,runs,warns", [
    ("fp32", True, "fp32", False), ("auto", True, "bf16", False), ("auto", False, "fp32", False),
    ("bf16", True, "bf16", False), ("bf16", False, "fp32", True),
    ("fp16", True, "fp32", True), ("fp16", False, "fp32", True)])
def test_what_runs_on_a_cpu(monkeypatch, asked, has_bf16, runs, warns):
    monkeypatch.setattr(P, "cpu_bf16", lambda: has_bf16)
    ran, warning = P.resolve(asked, "cpu")
    assert ran == runs and bool(warning) == warns
    if warns:
        assert warning.startswith("warning: ") and "fp32" in warning


def test_short_forms_and_their_conflicts(tiny_model_dir, tmp_path):
    assert P.requested(None, fp16=True) == "fp16" and P.requested(None, bf16=True) == "bf16"
    assert P.requested(None) == "auto" and P.requested(None, default="fp32") == "fp32"
    assert P.requested("bf16", bf16=True) == "bf16"
    proc = run_script("inference_lora.py", "--base_model_path", tiny_model_dir, "--prompts", "x",
                      "--output_dir", tmp_path / "o", "--fp16", "--precision", "bf16", check=False)
    assert_one_line_error(proc, "--fp16", "--precision bf16")


@pytest.fixture(scope="module")
def adapted(tiny_model_dir):
    """The tiny model with a LoRA adapter whose B is not zero (so merging it changes the weights)."""
    model, processor = load_model_and_processor(str(tiny_model_dir))
    torch.manual_seed(0)
    peft = apply_lora(model, 8, 16, 0.0)
    for name, param in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return peft.eval(), processor


def _batch(processor, model, texts, frames=40):
    info = unwrap_base(model).config.decoder
    torch.manual_seed(1)
    codes = torch.randint(0, info.vocab_size, (len(texts), info.num_codebooks, frames))
    from musicgen_lora.audio.codes import build_delay_pattern_labels
    from musicgen_lora.data.metadata import tokenize_text

    return dict(tokenize_text(processor.tokenizer, texts)), build_delay_pattern_labels(codes)


def test_the_merged_copy_computes_what_the_adapter_does_and_leaves_the_model_alone(adapted):
    model, processor = adapted
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs, labels = _batch(processor, model, PROMPTS)
    with torch.no_grad():
        wrapped = forward_logits(model, inputs, labels)
        with generation_model(model) as base:  # fp32: only the merge differs
            assert not any("lora" in n for n, _ in base.decoder.named_parameters())
            merged = forward_logits(model, inputs, labels)
    assert (merged - wrapped).abs().max() < 1e-4
    # The adapter really changes the output, so the comparison above can fail.
    with torch.no_grad(), model.disable_adapter():
        plain = forward_logits(model, inputs, labels)
    assert (plain - wrapped).abs().max() > 1e-2
    generate_audio(model, processor, PROMPTS, GenerationSettings(0.3, precision="bf16"), seed=1, progress=False)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any("lora_A" in n for n, _ in unwrap_base(model).decoder.named_parameters())


def test_bf16_holds_the_held_out_loss_and_the_label_agreement(adapted, example_data_dir):
    """What lets --precision auto choose bf16 for generation."""
    model, processor = adapted
    loader, _ = validation_loader(processor, model, example_data_dir, "metadata.json", 4.0, 4)
    fp32 = evaluate_loss(model, loader, progress=False)["loss"]
    with generation_model(model, "bf16"):
        bf16 = evaluate_loss(model, loader, progress=False)["loss"]
    print(f"held-out loss fp32 {fp32:.5f} vs bf16 {bf16:.5f} ({abs(bf16 - fp32) / fp32:.2%})")
    assert abs(bf16 - fp32) / fp32 < LOSS_TOLERANCE and bf16 != fp32  # bf16 really ran
    assert label_agreement(model, processor, PROMPTS, 30) == 1.0
    assert label_agreement(model, processor, PROMPTS, 30, precision="bf16") == 1.0


def test_the_same_seed_gives_the_same_clip_at_a_given_precision(adapted):
    model, processor = adapted
    for precision in ("fp32", "bf16"):
        how = GenerationSettings(0.5, precision=precision)
        a = generate_audio(model, processor, PROMPTS, how, seed=3, progress=False)
        b = generate_audio(model, processor, PROMPTS, how, seed=3, progress=False)
        assert all((x == y).all() for x, y in zip(a, b)), precision


@pytest.mark.slow
@pytest.mark.skipif(not P.cpu_bf16(), reason="this CPU has no bf16 instructions: --bf16 trains in fp32 here")
def test_a_bf16_training_run_tracks_fp32(tiny_model_dir, example_data_dir, tmp_path):
    curves = {}
    for flag in ("--precision fp32", "--bf16"):
        out = tmp_path / flag.strip("-").replace(" ", "_")
        run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", example_data_dir, "--output_dir",
                   out, "--num_epochs", 3, "--batch_size", 4, "--gradient_accumulation_steps", 1, "--learning_rate",
                   3e-3, "--warmup_steps", 1, "--logging_steps", 1, "--eval_steps", 2, "--save_steps", 0,
                   "--target_duration", 6, "--text_dropout", 0.0, "--no_progress", *flag.split())
        config = json.loads((out / "run_config.json").read_text())
        assert config["precision"] == ("bf16" if flag == "--bf16" else "fp32") and config["threads"] >= 1
        records = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
        curves[flag] = [r["valid_loss"] for r in records if "valid_loss" in r]
    fp32, bf16 = curves["--precision fp32"], curves["--bf16"]
    print("valid loss fp32", [round(v, 4) for v in fp32], "bf16", [round(v, 4) for v in bf16])
    assert len(fp32) == len(bf16) >= 3
    assert fp32[-1] < fp32[0] - 0.05  # it learns, so tracking means something
    assert all(abs(b - f) / f < 0.02 for f, b in zip(fp32, bf16))
