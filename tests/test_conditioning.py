"""Conditioning dropout as the reference trainer does it: the whole description dropped (the null
condition classifier-free guidance uses) and, for the rest, words dropped (audiocraft's T5 word
dropout) -- both through the project's own dataset, tokenizer and forward."""
import json

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.musicgen.modeling_musicgen import shift_tokens_right

from musicgen_lora.audio.codes import build_delay_pattern_labels
from musicgen_lora.data.dataset import MusicDataset
from musicgen_lora.data.metadata import drop_words, read_metadata, tokenize_text
from musicgen_lora.model.checkpoint import load_model_and_processor, model_info
from musicgen_lora.model.loss import forward_logits
from musicgen_lora.training.config import TrainConfig

from conftest import assert_one_line_error, run_script


def generate_null_logits(model, inputs, labels):
    """The decoder's logits under the null condition exactly as generate() builds it for guidance:
    zero text-encoder states with an all-zero attention mask (transformers' MusicGen,
    _prepare_text_encoder_kwargs_for_generation)."""
    info = model_info(model)
    states = model.text_encoder(input_ids=inputs["input_ids"],
                                attention_mask=inputs["attention_mask"]).last_hidden_state
    dec_in = shift_tokens_right(labels, info["pad_token_id"], info["decoder_start_token_id"])
    b, k, s = dec_in.shape
    out = model(encoder_outputs=BaseModelOutput(last_hidden_state=torch.zeros_like(states)),
                attention_mask=torch.zeros_like(inputs["attention_mask"]), decoder_input_ids=dec_in.reshape(b * k, s))
    return out.logits


def test_null_condition_is_what_generate_pairs_with_each_prompt(tiny_model_dir):
    model, processor = load_model_and_processor(str(tiny_model_dir))
    model.eval()
    k = model_info(model)["num_codebooks"]
    labels = build_delay_pattern_labels(torch.randint(0, 64, (2, k, 12)))
    inputs = dict(tokenize_text(processor.tokenizer, ["lo-fi hip hop beat", "dark trap beat with 808"]))
    with torch.no_grad():
        reference = generate_null_logits(model, inputs, labels)
        dropped = forward_logits(model, inputs, labels, text_dropout=1.0)  # every description dropped
        emptied = forward_logits(model, dict(tokenize_text(processor.tokenizer, ["", " "])), labels)  # words all gone
        kept = forward_logits(model, inputs, labels)
    assert torch.allclose(dropped, reference, atol=1e-5)
    assert torch.allclose(emptied, reference, atol=1e-5)
    assert not torch.allclose(kept, reference, atol=1e-3)  # the condition matters, so the test can fail


def test_melody_condition_dropout_drops_the_melody_too(tiny_melody_model_dir):
    """On MusicGen-Melody the null condition generate() pairs with each prompt is null text AND the null
    chroma (audiocraft's classifier-free-guidance dropout nulls every attribute at once): a dropped
    row must be exactly that, not null text beside the clip's real melody."""
    from musicgen_lora.audio.chroma import chroma_batch, null_chroma

    model, processor = load_model_and_processor(str(tiny_melody_model_dir))
    model.eval()
    labels = build_delay_pattern_labels(torch.randint(0, 64, (2, 4, 12)))
    text = dict(tokenize_text(processor.tokenizer, ["lo-fi hip hop beat", "dark trap beat"]))
    melody = torch.nn.functional.one_hot(torch.arange(30) % 12, 12).float()
    inputs = {**text, "input_features": chroma_batch([melody, melody.roll(5, -1)], 235)}
    null = {"input_ids": text["input_ids"], "attention_mask": torch.zeros_like(text["attention_mask"]),
            "input_features": torch.stack([null_chroma(235)] * 2)}
    with torch.no_grad():
        dropped = forward_logits(model, inputs, labels, text_dropout=1.0)
        reference = forward_logits(model, null, labels)
        text_only_dropped = forward_logits(model, {**inputs, "attention_mask": null["attention_mask"]}, labels)
    assert torch.allclose(dropped, reference, atol=1e-5)
    assert not torch.allclose(dropped, text_only_dropped, atol=1e-4)  # the melody matters, so this can fail


def test_training_runs_the_decoder_without_the_hub_configs_dropout(tiny_model_dir):
    """The checkpoints' decoder config says dropout 0.1 (transformers' default; audiocraft trained with
    0): loaded for training with decoder_dropout=0 (train_lora.py's default), two forwards in train
    mode give the same logits; with the checkpoint's own 0.1 they do not."""
    from musicgen_lora.model.lora import apply_lora

    labels = build_delay_pattern_labels(torch.randint(0, 64, (1, 4, 20)))
    for dropout, same in ((None, False), (0.0, True)):
        model, processor = load_model_and_processor(str(tiny_model_dir), decoder_dropout=dropout)
        assert model.config.decoder.dropout == (0.1 if dropout is None else 0.0)
        model = apply_lora(model, 4, 8, 0.0)
        model.train()
        inputs = dict(tokenize_text(processor.tokenizer, ["lo-fi hip hop beat"]))
        with torch.no_grad():
            first, second = (forward_logits(model, inputs, labels) for _ in range(2))
        assert torch.equal(first, second) == same, dropout


def test_drop_words_rate_and_null():
    rng = np.random.default_rng(0)
    text = " ".join(f"w{i}" for i in range(1000))
    kept = drop_words(text, 0.3, rng).split(" ")
    assert 0.66 < len(kept) / 1000 < 0.74
    assert kept == [w for w in text.split(" ") if w in set(kept)]  # order kept, nothing invented
    assert drop_words(text, 0.0, rng) == text
    assert drop_words("two words", 1.0, rng) == ""  # -> the null condition (tokenize_text zeroes its mask)


def test_word_dropout_in_the_dataset_is_seeded_and_training_only(example_data_dir):
    clips = read_metadata(example_data_dir)["train"]
    kw = dict(sample_rate=32000, target_duration=4.0, hop_length=640, audio_channels=1, seed=3)
    plain = MusicDataset(clips, train=True, **kw)
    dropped = MusicDataset(clips, train=True, word_dropout=0.3, **kw)
    again = MusicDataset(clips, train=True, word_dropout=0.3, **kw)
    valid = MusicDataset(clips, train=False, word_dropout=0.3, **kw)
    words = total = 0
    for epoch in (1, 2):
        for ds in (plain, dropped, again):
            ds.set_epoch(epoch)
        for i in range(len(clips)):
            a, b, c = plain.item(i), dropped.item(i), again.item(i)
            assert b["description"] == c["description"]  # same (seed, epoch, clip): same words, on a resume too
            assert b["frame_offset"] == a["frame_offset"]  # the crops do not move
            assert a["description"] == clips[i].description == valid.item(i)["description"]
            words += len(b["description"].split())
            total += len(clips[i].description.split())
    assert 0.5 < words / total < 0.85


@pytest.mark.slow
def test_defaults_follow_audiocraft_and_are_recorded(tmp_path, tiny_model_dir, tiny_melody_model_dir,
                                                     example_data_dir):
    """audiocraft's settings by kind of model: text2music 0.3 / 0.3; chroma2music 0.2 / 0.2 and the
    melody 0.5. What ran is in run_config.json; a melody flag on a text-only model is a warning."""
    cfg = TrainConfig()
    assert cfg.resolve_conditioning("musicgen") == [] and (cfg.text_dropout, cfg.word_dropout) == (0.3, 0.3)
    help_text = run_script("train_lora.py", "--help").stdout
    assert "--word_dropout" in help_text and "--chroma_dropout" in help_text
    common = ("--data_dir", example_data_dir, "--max_steps", 1, "--batch_size", 2, "--gradient_accumulation_steps", 1,
              "--target_duration", 2, "--save_steps", 0, "--no_progress")
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--output_dir", tmp_path / "text", *common,
                      "--chroma_dropout", 0.4)
    assert "--chroma_dropout applies to MusicGen-Melody checkpoints" in proc.stderr
    cfg = json.loads((tmp_path / "text" / "run_config.json").read_text())
    assert (cfg["text_dropout"], cfg["word_dropout"], cfg["chroma_dropout"]) == (0.3, 0.3, None)
    assert cfg["decoder_dropout"] == 0.0 and "; decoder dropout 0" in proc.stderr
    run_script("train_lora.py", "--model_path", tiny_melody_model_dir, "--output_dir", tmp_path / "melody", *common,
               "--word_dropout", 0.1)
    cfg = json.loads((tmp_path / "melody" / "run_config.json").read_text())
    assert (cfg["text_dropout"], cfg["word_dropout"], cfg["chroma_dropout"]) == (0.2, 0.1, 0.5)


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan"])
def test_word_dropout_flag_range(value, tmp_path):
    proc = run_script("train_lora.py", "--word_dropout", value, "--output_dir", tmp_path / "r", check=False)
    assert_one_line_error(proc, "--word_dropout")
