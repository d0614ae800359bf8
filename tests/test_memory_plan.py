"""The memory plan (musicgen_lora/training/memory.py): it grows and shrinks the way the step's memory
does, says in one line what fits when a GPU is too small, and train_lora.py prints it before the
first clip is encoded. Big architectures are planned from configs on the meta device (no memory)."""
import dataclasses
import functools
import json
import shlex
import types

import pytest

from conftest import assert_one_line_error, run_script

GIB = 2**30
RTX_24GB = int(23.99 * GIB)  # what torch reports for a 24 GB card
# A (stereo) MusicGen-Melody layout whose step dwarfs the ~10 MB per step no term counts (the tiny model's
# whole step is about that): small's 2048-code vocabulary over a narrow 4-layer decoder, so both the
# logits (prefix included) and the activations weigh, and it builds and steps on a CPU in seconds.
PROBE = {"decoder": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024, vocab_size=2048),
         "text": dict(d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16),
         "codec": dict(hidden_size=16, num_filters=4, codebook_size=2048, codebook_dim=16, target_bandwidths=[2.2],
                       num_lstm_layers=1),
         "text_vocab": None, "max_positions": 1024}


@pytest.fixture(scope="module")
def probe_melody_dir(tmp_path_factory):
    from musicgen_lora.model import offline as tiny_model

    out = tmp_path_factory.mktemp("models") / "probe-stereo-melody"
    tiny_model.SIZES["probe"] = PROBE
    try:
        tiny_model.build(str(out), "probe", stereo=True, melody=True)
    finally:
        del tiny_model.SIZES["probe"]
    return out


@functools.cache
def shape(size: str, stereo: bool = False, melody: bool = False):
    from musicgen_lora.model.offline import build_config, melody_config
    from musicgen_lora.training.memory import model_shape

    config = build_config(size, text_vocab=32128, stereo=stereo)
    return model_shape(melody_config(config) if melody else config)


def plan(size="small", stereo=False, melody=False, **settings):
    from musicgen_lora.training.memory import plan_memory

    settings = {"device": "cuda:0", "capacity": RTX_24GB, **settings}
    return plan_memory(shape(size, stereo, melody), **settings)


def test_plan_grows_with_batch_and_window():
    base = plan(batch_size=2, window_seconds=10)
    bigger_batch, longer = plan(batch_size=4, window_seconds=10), plan(batch_size=2, window_seconds=20)
    for p in (bigger_batch, longer):
        assert p.activations > 1.9 * base.activations and p.logits > 1.9 * base.logits and p.total > base.total
        assert (p.weights, p.lora, p.overhead) == (base.weights, base.lora, base.overhead)  # per-step terms only
    assert plan(window_seconds=10).total < plan(window_seconds=30).total


def test_checkpointing_keeps_only_layer_inputs():
    off, on = plan(gradient_checkpointing=False), plan(gradient_checkpointing=True)
    assert on.activations < off.activations / 5 and on.total < off.total
    assert on.logits == off.logits and on.weights == off.weights  # the loss is outside the checkpointed layers
    half_off, half_on = plan(precision="fp16"), plan(precision="fp16", gradient_checkpointing=True)
    assert half_off.activations < off.activations  # 2-byte activations under autocast
    assert half_on.weight_copies < half_off.weight_copies / 10  # one layer's fp16 weight copies, not all
    assert off.weight_copies == 0  # fp32 keeps the weights themselves


def test_stereo_has_larger_logits_same_sequence():
    from musicgen_lora.training.memory import sequence_length

    mono, stereo = plan(stereo=False), plan(stereo=True)
    assert sequence_length(shape("small"), 15) == sequence_length(shape("small", True), 15) == 15 * 50 + 3
    assert stereo.logits == 2 * mono.logits  # 8 LM heads, 8 x S x V logits
    assert stereo.activations == mono.activations  # summed codebook embeddings: same decoder work


def test_melody_decoder_runs_over_its_prefix_without_cross_attention():
    """MusicGen-Melody (musicgen-melody is medium's decoder without cross-attention): every layer sees
    P = 235 chroma frames + T text tokens before the S audio positions, so its activations are those
    of P + S positions, and a longer description costs it decoder positions (not cross-attention k/v)."""
    from musicgen_lora.model.lora import DEFAULT_TARGETS
    from musicgen_lora.training.memory import prefix_length, sequence_length

    text, melody = shape("medium"), shape("medium", melody=True)
    assert melody.melody and melody.chroma_length == 235 and not text.melody
    assert prefix_length(melody, 20) == 255 and prefix_length(text, 20) == 0
    assert sequence_length(melody, 15) == sequence_length(text, 15) == 753
    h, f = melody.hidden, melody.ffn
    assert melody.linear_weights_per_layer == 4 * h * h + 2 * h * f < text.linear_weights_per_layer
    assert melody.lora_parameters(12, DEFAULT_TARGETS) < text.lora_parameters(12, DEFAULT_TARGETS)
    assert melody.frozen_parameters < text.frozen_parameters  # no cross-attention weights
    # fp32 SDPA: every activation term is per decoder position, so activations scale as P + S exactly.
    short, wordy = (plan("medium", melody=True, precision="fp32", text_tokens=t) for t in (10, 110))
    assert short.activations * (235 + 110 + 753) == wordy.activations * (235 + 10 + 753)


def test_melody_logits_cover_the_prefix():
    """The LM heads run over the [chroma, text] prefix too: logits count its positions (forward: the
    heads' outputs and their stack over P + S; backward: the prefix's zero gradient beside the audio
    positions' 12 bytes), so at a short window melody's logits are several times text-only's."""
    from musicgen_lora.training.memory import prefix_length, sequence_length

    for window in (1, 15):
        text, melody = plan(window_seconds=window, precision="fp32"), plan(melody=True, window_seconds=window,
                                                                           precision="fp32")
        s, p, unit = sequence_length(shape("small"), window), prefix_length(shape("small", melody=True), 64), 8 * 2048
        assert text.logits == unit * 12 * s
        assert melody.logits == unit * max(12 * s + 4 * p, 8 * (p + s)) > text.logits
    assert plan(melody=True, window_seconds=1).logits > 3 * plan(window_seconds=1).logits
    assert plan(stereo=True, melody=True).logits == 2 * plan(melody=True).logits  # 8 LM heads


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True], ids=["checkpointing off", "checkpointing on"])
def test_melody_plan_matches_a_measured_step(probe_melody_dir, checkpointing):
    """benchmarks/memory.py's worker (real LoRA steps, peak RSS with freed tensors leaving it) on a
    stereo MusicGen-Melody checkpoint at 1 s, where the 235-frame prefix is most of the sequence: the
    plan's step and total are within 15% / 10% of the measured ones. A plan by the text-only
    derivation (cross-attention, no prefix), or one whose logits forgot the prefix positions, is far
    low; one that added the layers' backward on top of the logits is far high with checkpointing."""
    from musicgen_lora.training.memory import LOGITS_BYTES, plan_memory, sequence_length

    proc = run_script("benchmarks.memory", "--_worker", "--model_path", probe_melody_dir, "--duration", 1,
                      "--batch_size", 2, "--steps", 1, "--device", "cpu",
                      *(["--gradient_checkpointing"] if checkpointing else []),
                      env={"MALLOC_MMAP_THRESHOLD_": str(2**17)}, subprocess=True)  # its own peak RSS
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    step, mib = r["step_mb"] * 2**20, 2**20
    assert 0.85 < r["plan_step_mb"] / r["step_mb"] < 1.15 and 0.9 < r["plan_mb"] / r["peak_mb"] < 1.1, r
    melody = shape_of(probe_melody_dir)
    asked = dict(precision="fp32", batch_size=2, window_seconds=1, lora_rank=12, lora_dropout=0.05, cached=False,
                 codec_seconds=1, text_tokens=r["text_tokens"], device="cpu", gradient_checkpointing=checkpointing)
    plan = plan_memory(melody, **asked)
    assert plan.step / mib == pytest.approx(r["plan_step_mb"])  # the worker planned these settings
    text_only = plan_memory(dataclasses.replace(melody, chroma_length=0), **asked).step
    audio_logits = LOGITS_BYTES * 2 * melody.codebooks * sequence_length(melody, 1) * melody.vocab
    assert text_only < 0.6 * step and dataclasses.replace(plan, logits=audio_logits).step < 0.8 * step, (r, plan)
    if checkpointing:
        assert plan.step + min(plan.logits, plan.layer_backward) > 1.15 * step


def shape_of(model_dir):
    from transformers import AutoConfig

    from musicgen_lora.training.memory import model_shape

    return model_shape(AutoConfig.from_pretrained(model_dir), decoder_dropout=0.0)  # what train_lora.py runs at


def test_uncached_codes_count_the_codec_but_not_on_top_of_the_step():
    cached, uncached = plan(window_seconds=5), plan(window_seconds=5, cached=False)
    assert cached.codec == 0 < uncached.codec
    assert uncached.total == cached.total - cached.step + max(cached.step, uncached.codec)
    assert "EnCodec encode" in uncached.describe() and "EnCodec" not in cached.describe()


def test_lora_count_and_weights_match_the_loaded_model(tiny_model_dir):
    from musicgen_lora.model.checkpoint import load_model_and_processor
    from musicgen_lora.model.lora import DEFAULT_TARGETS, apply_lora, count_parameters
    from musicgen_lora.training.memory import model_shape

    model, _ = load_model_and_processor(str(tiny_model_dir))
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    for targets in (DEFAULT_TARGETS, ("q_proj", "fc2")):
        lora_model = apply_lora(model, 4, 8, 0.0, targets)
        s = model_shape(lora_model)
        assert s.lora_parameters(4, targets) == count_parameters(lora_model)[0]
        assert s.weight_bytes == weight_bytes
        model = lora_model.unload()


def test_large_fp32_does_not_fit_24gb_and_the_suggested_flags_do():
    from musicgen_lora.cli.train import build_parser, config_from
    from musicgen_lora.core.common import UserError
    from musicgen_lora.training.memory import check_plan

    asked = plan("large", precision="fp32", batch_size=2, window_seconds=15, gradient_accumulation_steps=4)
    assert not asked.fits and asked.total > 24 * GIB
    with pytest.raises(UserError) as e:
        check_plan(asked, half="bf16")
    message = str(e.value)
    assert "\n" not in message and "--ignore_memory_plan" in message and "these settings fit: --" in message
    # The flags, as a user would paste them after the run's own, re-planned: they fit.
    flags = message.split("these settings fit: ")[1].split(" (about")[0]
    cfg = config_from(build_parser().parse_args(["--batch_size", "2", "--gradient_accumulation_steps", "4",
                                                 *shlex.split(flags)]))
    ran = cfg.requested_precision
    fixed = asked.replan(precision=ran, batch_size=cfg.batch_size, window_seconds=cfg.window_seconds,
                         gradient_checkpointing=cfg.gradient_checkpointing)
    assert fixed.fits and fixed.total <= asked.usable
    assert cfg.batch_size * cfg.gradient_accumulation_steps == 8  # the global batch is kept


@pytest.mark.parametrize("settings,needles", [
    (dict(size="large", precision="fp32", batch_size=4, window_seconds=30), ["--gradient_checkpointing"]),
    (dict(size="medium", precision="fp16", batch_size=32, window_seconds=30, gradient_checkpointing=True,
          gradient_accumulation_steps=1), ["--batch_size", "--gradient_accumulation_steps"]),
])
def test_every_suggestion_fits_when_replanned(settings, needles):
    from musicgen_lora.training.memory import flags_for, suggest

    asked = plan(**settings)
    assert not asked.fits
    fix, fits = suggest(asked, "bf16")
    assert fits and fix.fits
    flags = flags_for(fix, asked)
    assert all(n in flags for n in needles), flags
    assert fix.settings.batch_size * fix.settings.gradient_accumulation_steps == \
        asked.settings.batch_size * asked.settings.gradient_accumulation_steps


def test_nothing_fits_says_so_in_one_line(capsys):
    from musicgen_lora.cli.runner import cli
    from musicgen_lora.training.memory import check_plan

    tiny_gpu = plan("large", capacity=8 * GIB)  # the weights alone are 12.8 GiB

    @cli
    def main(argv=None):
        check_plan(tiny_gpu, half="fp16")

    rc = main([])
    proc = types.SimpleNamespace(returncode=rc, stderr=capsys.readouterr().err)
    assert_one_line_error(proc, "memory plan", "nothing fits", "--target_duration", "smaller model",
                          "--ignore_memory_plan", "8.0 GiB")


def test_ignore_memory_plan_and_cpu_plans_warn_instead(caplog):
    from musicgen_lora.training.memory import check_plan

    with caplog.at_level("WARNING", logger="musicgen_lora"):
        check_plan(plan("large", capacity=8 * GIB), ignore=True, half="bf16")  # no exception
        check_plan(plan("large", device="cpu", capacity=8 * GIB))  # a CPU never stops
    assert "starting anyway (--ignore_memory_plan" in caplog.text and "RAM" in caplog.text


def test_describe_is_one_line_with_every_part():
    line = plan(precision="fp16", batch_size=2, window_seconds=15).describe()
    assert line.startswith("memory plan (cuda:0, fp16, batch 2 x 15 s, checkpointing off): weights ")
    for part in ("LoRA/optimizer", "activations", "fp16 weight copies", "logits", "overhead", "of 24.0 GiB"):
        assert part in line
    assert "\n" not in line


def test_train_prints_the_plan_and_records_it(tiny_model_dir, example_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", example_data_dir,
                      "--output_dir", out, "--max_steps", 1, "--batch_size", 2, "--gradient_accumulation_steps", 1,
                      "--target_duration", 4, "--no_progress", "--gradient_checkpointing")
    log = proc.stdout + proc.stderr
    lines = [line for line in log.splitlines() if line.startswith("memory plan (")]
    assert len(lines) == 1 and "(cpu, fp32, batch 2 x 4 s, checkpointing on)" in lines[0], log[-2000:]
    assert log.index("memory plan (") < log.index("code store")  # planned before any clip is encoded
    config = json.loads((out / "run_config.json").read_text())
    assert 0 < config["memory_plan_gib"] < 2 and config["ignore_memory_plan"] is False


def test_memory_plan_tool_lists_what_fits_a_24gb_card(tiny_model_dir):
    """finetune/scripts/memory_plan.py: every released text-to-music layout, without loading weights;
    large fits a 24 GiB card only with checkpointing, and the suggestion says so."""
    out = run_script("memory_plan.py", "--gpu_gib", 24, "--precision", "bf16").stdout
    rows = {tuple(line.split()[:2]): line for line in out.splitlines() if line.startswith("musicgen-")}
    assert len(rows) == 20  # 6 text-to-music layouts and the 4 released melody ones, checkpointing off and on
    assert " yes " in rows[("musicgen-small", "off")] and " yes " in rows[("musicgen-stereo-large", "on")]
    assert " no " in rows[("musicgen-large", "off")] and "--gradient_checkpointing" in rows[("musicgen-large", "off")]
    assert " yes " in rows[("musicgen-melody", "off")] and " yes " in rows[("musicgen-stereo-melody-large", "on")]
    assert "--gradient_checkpointing" in rows[("musicgen-melody-large", "off")]
    local = run_script("memory_plan.py", "--model_path", tiny_model_dir).stdout
    assert "tiny-musicgen" in local and "as asked" in local
    proc = run_script("memory_plan.py", "--model_path", tiny_model_dir / "nowhere", check=False)
    assert_one_line_error(proc, "--model_path")


def test_memory_plan_tool_reads_a_melody_checkpoint(probe_melody_dir):
    """--model_path a MusicGen-Melody folder: planned as melody (its 235-frame prefix, no
    cross-attention). The control: the same decoder planned as text-only MusicGen gives another
    figure, so a tool that read the folder as text-only (MusicgenConfig fills any config with its
    defaults) would print that one and fail here."""
    from musicgen_lora.training.memory import gib, plan_memory

    out = run_script("memory_plan.py", "--model_path", probe_melody_dir, "--target_duration", 10).stdout
    row = next(line for line in out.splitlines() if line.startswith("probe-stereo-melody ") and " off " in line)
    settings = dict(precision="bf16", window_seconds=10, device="cuda", capacity=24 * GIB)
    melody = shape_of(probe_melody_dir)
    assert melody.chroma_length == 235 and melody.melody
    text_only = dataclasses.replace(melody, chroma_length=0)
    expected, wrong = plan_memory(melody, **settings).total, plan_memory(text_only, **settings).total
    assert gib(expected) != gib(wrong)
    assert f" {gib(expected)} " in row and f" {gib(wrong)} " not in row and "as asked" in row, out


def test_memory_plan_tool_refuses_a_config_that_is_not_musicgen(tmp_path):
    """MusicgenConfig.from_pretrained fills any config.json with MusicGen defaults: another model's
    folder must be one line, not a plan for a model that does not exist."""
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    proc = run_script("memory_plan.py", "--model_path", tmp_path, check=False)
    assert_one_line_error(proc, "'bert' config", "--model_path")
    assert "memory plan for" not in proc.stdout
