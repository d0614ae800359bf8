"""End to end through the CLI: train, improve on the base, reload adapters with plain PEFT."""
import json

import numpy as np
import torch
from peft import PeftModel
from transformers import MusicgenForConditionalGeneration

from musicgen_lora.data.dataset import Collator, MusicDataset
from musicgen_lora.data.metadata import read_metadata
from musicgen_lora.modeling import apply_lora, evaluate_loss, load_model_and_processor, model_info


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
    ds = MusicDataset(clips, info["sample_rate"], 6.0, train=False, hop_length=info["hop_length"],
                      audio_channels=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=Collator(processor, 6 * info["sample_rate"],
                                                                                 info["hop_length"]))
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


def test_sample_every_writes_audible_progress(tiny_model_dir, example_data_dir, tmp_path):
    import soundfile as sf

    from conftest import run_script

    out = tmp_path / "run"
    run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", example_data_dir, "--output_dir", out,
               "--num_epochs", 2, "--batch_size", 4, "--gradient_accumulation_steps", 1, "--target_duration", 2,
               "--sample_every", 1, "--sample_duration", 1.0, "--learning_rate", 3e-2, "--warmup_steps", 0,
               "--no_progress")
    folders = sorted((out / "samples").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    steps = [json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "eval" and json.loads(line)["step"] > 0]
    assert [f.name for f in folders] == [f"step-{s}" for s in steps]  # one folder per validation
    clips = sorted(folders[-1].glob("*.wav"))
    assert len(clips) == 2  # the example set's first validation descriptions (2 valid clips)
    for clip in clips:
        info = sf.info(str(clip))
        assert info.samplerate == 32000 and abs(info.duration - 1.0) < 0.021
        sidecar = json.loads(clip.with_suffix(".json").read_text())
        assert sidecar["prompt"] and sidecar["step"] == steps[-1]
    # Later samples come from a changed adapter: the audio differs from the first sampling point.
    first, last = (sf.read(str(sorted(f.glob("*.wav"))[0]))[0] for f in (folders[0], folders[-1]))
    assert not np.array_equal(first, last)


def test_frozen_text_encoder_is_deterministic_in_training(tiny_model_dir):
    """Training mode must not perturb the (frozen) conditioning: same description, same T5 states."""
    model, processor = load_model_and_processor(str(tiny_model_dir))
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.text_encoder.modules())
    model = apply_lora(model, 4, 8, 0.1)
    model.train()
    enc = processor(text=["lo-fi hip hop beat with vinyl crackle"], return_tensors="pt")
    text_encoder = model.get_base_model().text_encoder
    with torch.no_grad():
        first, second = (text_encoder(**enc).last_hidden_state for _ in range(2))
    assert torch.equal(first, second)


def test_lora_memorises_one_clip_and_greedy_generation_reproduces_it(tiny_model_dir, example_data_dir, tmp_path):
    """A learning test that can fail. One 2 s clip (listed 50 times, so an epoch is 50 steps), LoRA
    and text dropout off, 500 steps through the real command line; then greedy generation with
    guidance really off, through the project's own generation function, must reproduce the clip's
    EnCodec codes, while the base model stays at chance (1/64 per position)."""
    import soundfile as sf

    from musicgen_lora.audio import AudioPieces, piece_samples
    from musicgen_lora.generation import generate_audio
    from musicgen_lora.modeling import encode_pieces, load_adapter

    from conftest import run_script

    data = tmp_path / "data"
    data.mkdir()
    src = read_metadata(example_data_dir)["train"][0]
    wav, sr = sf.read(src.audio_path, dtype="float32")
    sf.write(data / "clip.wav", wav[: 2 * sr], sr)
    entry = {"audio": "clip.wav", "description": src.description}
    (data / "metadata.json").write_text(json.dumps({"train": [entry] * 50, "valid": [entry]}))
    run = tmp_path / "run"
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", data, "--output_dir", run,
                      "--num_epochs", 10, "--batch_size", 1, "--gradient_accumulation_steps", 1,
                      "--learning_rate", 3e-3, "--lora_rank", 32, "--lora_alpha", 64, "--lora_dropout", 0,
                      "--text_dropout", 0, "--word_dropout", 0, "--warmup_steps", 0, "--target_duration", 2,
                      "--save_steps", 0,
                      "--logging_steps", 100, "--no_progress")
    assert "listed twice in train" in proc.stderr and "in both train and valid" in proc.stderr

    model, processor = load_model_and_processor(str(tiny_model_dir))
    info = model_info(model)
    pieces = AudioPieces(data / "clip.wav", info["sample_rate"], piece_samples(info["sample_rate"], info["hop_length"]))
    target = encode_pieces(model, [pieces.read(j) for j in range(pieces.num_pieces)])

    def greedy_codes(m):
        _, codes = generate_audio(m, processor, [src.description], 2.0, greedy=True, guidance_scale=1.0,
                                  progress=False, return_codes=True)
        return codes[0][:, : target.shape[1]]

    base = (greedy_codes(model) == target).float().mean().item()
    adapted = load_adapter(load_model_and_processor(str(tiny_model_dir))[0], run / "final_model")
    learned = (greedy_codes(adapted) == target).float().mean().item()
    summary = json.loads((run / "logs" / "summary.json").read_text())
    print(f"memorisation: base {100 * base:.1f}% of codes, adapter {100 * learned:.1f}% "
          f"(validation loss {summary['base_valid_loss']:.3f} -> {summary['final_valid_loss']:.3f})")
    assert learned >= 0.9 and base < 0.1
