"""End to end through the CLI: train, improve on the base, reload adapters with plain PEFT."""
import json

import torch
from peft import PeftModel
from transformers import MusicgenForConditionalGeneration

from dataset import Collator, MusicDataset, read_metadata
from modeling import apply_lora, evaluate_loss, load_model_and_processor, model_info


def _records(run):
    return [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]


def test_training_improves_validation_loss_and_writes_run(trained_run):
    run, output = trained_run
    summary = json.loads((run / "logs" / "summary.json").read_text())
    assert summary["best_valid_loss"] < summary["base_valid_loss"]
    assert "step 0: base validation loss" in output and "uniform guess ln(64)" in output
    for name in ("best_model", "final_model", "checkpoints/checkpoint-2"):
        assert (run / name / "adapter_config.json").is_file()
        assert (run / name / "adapter_model.safetensors").is_file()
    cfg = json.loads((run / "run_config.json").read_text())
    assert cfg["lora_rank"] == 12 and cfg["target_duration"] == 6 and cfg["text_dropout"] == 0.0
    recs = _records(run)
    train = [r for r in recs if r["type"] == "train"]
    evals = [r for r in recs if r["type"] == "eval"]
    assert evals[0]["step"] == 0 and len(evals) == 4  # step 0 + one per epoch
    for key in ("train_loss", "learning_rate", "grad_norm", "samples_per_s", "tokens_per_s", "peak_memory_mb"):
        assert all(r[key] is not None for r in train), key
    assert len(evals[-1]["valid_loss_per_codebook"]) == 4


def test_adapters_reload_with_plain_peft_and_match(trained_run, tiny_model_dir, example_data_dir):
    run, _ = trained_run
    summary = json.loads((run / "logs" / "summary.json").read_text())
    base = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(run / "final_model")).eval()
    _, processor = load_model_and_processor(str(tiny_model_dir))
    info = model_info(model)
    clips = read_metadata(example_data_dir)["valid"]
    ds = MusicDataset(clips, info["sample_rate"], 6.0, train=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=Collator(processor, 6 * info["sample_rate"]))
    res = evaluate_loss(model, loader, progress=False)
    # The reloaded final adapter reproduces the loss the trainer measured in memory.
    assert abs(res["loss"] - summary["final_valid_loss"]) < 1e-4
    assert res["loss"] < summary["base_valid_loss"]

    # best_model reproduces its recorded loss too, and differs from the untouched base.
    base2 = MusicgenForConditionalGeneration.from_pretrained(tiny_model_dir)
    best = PeftModel.from_pretrained(base2, str(run / "best_model")).eval()
    best_loss = evaluate_loss(best, loader, progress=False)["loss"]
    assert abs(best_loss - summary["best_valid_loss"]) < 1e-4
    with best.disable_adapter():
        assert abs(evaluate_loss(best, loader, progress=False)["loss"] - summary["base_valid_loss"]) < 1e-4


def test_lora_touches_decoder_only(tiny_model_dir):
    model, _ = load_model_and_processor(str(tiny_model_dir))
    model = apply_lora(model, 4, 8, 0.0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".decoder.model.decoder.layers." in n and "lora_" in n for n in names)
    for suffix in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
        assert any(f"{suffix}.lora_A" in n for n in names), suffix
    assert any("encoder_attn" in n for n in names)  # cross-attention adapted too
