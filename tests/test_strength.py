"""Adapter strength (--lora_scale) and mixing (--lora_model_path A:w B:w) on the tiny offline MusicGen.
The tiny codec decodes any codes to the same buzz, so clips are compared by their codes (--save_codes)
or by logits, never by audio."""
import json
import shutil

import pytest
import torch
from transformers import MusicgenForConditionalGeneration

from musicgen_lora.core.common import UserError
from musicgen_lora.evaluation.compare import validation_loader
from musicgen_lora.generation.config import weighted_paths
from musicgen_lora.generation.generate import read_codes
from musicgen_lora.model.checkpoint import load_model_and_processor
from musicgen_lora.model.lora import load_weighted
from musicgen_lora.model.loss import evaluate_loss
from musicgen_lora.model.targets import ADAPTER_TYPES

from conftest import assert_one_line_error, run_script

PROMPTS = ["dark trap 808", "lofi chill"]


def test_only_a_trailing_number_is_a_weight(tmp_path):
    assert weighted_paths(["a/best_model"]) == [("a/best_model", 1.0)]
    assert weighted_paths(["jazz/best_model:0.7", "lofi:b/best_model:.3"]) == [("jazz/best_model", 0.7),
                                                                               ("lofi:b/best_model", 0.3)]
    assert weighted_paths(["run:final/best_model"]) == [("run:final/best_model", 1.0)]  # ':' inside a path
    (tmp_path / "take:2").mkdir()
    assert weighted_paths([str(tmp_path / "take:2")]) == [(str(tmp_path / "take:2"), 1.0)]  # exists: a folder
    assert weighted_paths(["a:0.5", "b"], scale=2.0) == [("a", 1.0), ("b", 2.0)]  # --lora_scale multiplies
    with pytest.raises(UserError, match="a weight is 0 or more"):
        weighted_paths(["a:-0.5"])


def _codes(tiny_model_dir, out, *flags):
    run_script("inference_lora.py", "--model_path", tiny_model_dir, "--prompts", *PROMPTS, "--duration", 1.0,
               "--seed", 5, "--save_codes", "--output_dir", out, "--no_progress", *flags)
    return [read_codes(p) for p in sorted(out.glob("*.codes.safetensors"))]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_strength_0_is_the_base_model_and_1_the_adapter(tiny_model_dir, trained_run, tmp_path):
    run, _ = trained_run
    adapter = run / "final_model"
    base = _codes(tiny_model_dir, tmp_path / "base")
    trained = _codes(tiny_model_dir, tmp_path / "trained", "--lora_model_path", adapter)
    zero = _codes(tiny_model_dir, tmp_path / "zero", "--lora_model_path", adapter, "--lora_scale", 0)
    one = _codes(tiny_model_dir, tmp_path / "one", "--lora_model_path", adapter, "--lora_scale", 1)
    assert not _same(base, trained)  # the control: this adapter changes the codes, so 0 == base means something
    assert _same(zero, base)
    assert _same(one, trained)
    side = json.loads(next((tmp_path / "zero").glob("00_*.json")).read_text())
    assert side["lora_scale"] == 0.0 and side["adapters"][0]["strength"] == 0.0
    assert side["adapter"] == str(adapter.resolve())


@pytest.mark.slow
def test_logits_at_half_strength_lie_between_and_the_merge_keeps_the_strength(tiny_model_dir, trained_run,
                                                                              tmp_path):
    run, _ = trained_run
    adapter = str(run / "final_model")
    base, processor = load_model_and_processor(str(tiny_model_dir))
    inputs = processor(text=["trap beat"], return_tensors="pt")
    dec = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    model = load_weighted(base, [(adapter, 1.0)]).eval()

    def logits(strength):
        from musicgen_lora.model.lora import set_strengths

        set_strengths(model, {"default": strength})
        with torch.no_grad():
            return model(**inputs, decoder_input_ids=dec).logits

    at = {s: logits(s) for s in (0.0, 0.5, 1.0)}
    with torch.no_grad(), model.disable_adapter():
        plain = model(**inputs, decoder_input_ids=dec).logits
    assert torch.equal(at[0.0], plain)
    d = {s: (at[s] - plain).abs().mean().item() for s in at}
    assert 0 < d[0.5] < d[1.0]
    assert (at[0.5] - at[1.0]).abs().mean() < (at[0.0] - at[1.0]).abs().mean()
    # the saved adapter is untouched: at 1 again, the logits are the trained ones
    assert torch.equal(logits(1.0), at[1.0])

    run_script("inference_lora.py", "--model_path", tiny_model_dir, "--lora_model_path", adapter, "--lora_scale", 0.5,
               "--merge", "--output_dir", tmp_path / "merged")
    merged = MusicgenForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        got = merged(**inputs, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, at[0.5], atol=1e-4, rtol=1e-4)
    assert (got - at[1.0]).abs().max() > 1e-3  # merged at 0.5, not at full strength
    info = json.loads((tmp_path / "merged" / "merge_info.json").read_text())
    assert info["lora_scale"] == 0.5 and info["adapters"][0]["strength"] == 0.5


@pytest.mark.slow
def test_held_out_loss_falls_monotonically_with_strength(tiny_model_dir, trained_run, example_data_dir):
    run, _ = trained_run
    base, processor = load_model_and_processor(str(tiny_model_dir))
    model = load_weighted(base, [(str(run / "final_model"), 1.0)]).eval()
    loader, _ = validation_loader(processor, model, example_data_dir, "metadata.json", 6.0, 4)
    from musicgen_lora.model.lora import set_strengths

    losses = []
    for strength in (0.0, 0.25, 0.5, 0.75, 1.0):
        set_strengths(model, {"default": strength})
        losses.append(evaluate_loss(model, loader, progress=False)["loss"])
    assert all(a > b for a, b in zip(losses, losses[1:])), losses  # equal losses (strength ignored) fail


@pytest.mark.slow
def test_a_mix_follows_its_weights(tiny_model_dir, trained_run, tmp_path):
    run, _ = trained_run
    first, second = run / "final_model", run / "checkpoints" / "checkpoint-2"
    alone_1 = _codes(tiny_model_dir, tmp_path / "a", "--lora_model_path", first)
    alone_2 = _codes(tiny_model_dir, tmp_path / "b", "--lora_model_path", second)
    assert not _same(alone_1, alone_2)  # the control: the two adapters generate differently
    assert _same(_codes(tiny_model_dir, tmp_path / "10", "--lora_model_path", f"{first}:1.0", f"{second}:0.0"),
                 alone_1)
    assert _same(_codes(tiny_model_dir, tmp_path / "01", "--lora_model_path", f"{first}:0", f"{second}:1"), alone_2)
    half = _codes(tiny_model_dir, tmp_path / "55", "--lora_model_path", f"{first}:0.5", f"{second}:0.5")
    assert not _same(half, alone_1) and not _same(half, alone_2)
    side = json.loads(next((tmp_path / "55").glob("00_*.json")).read_text())
    assert side["adapter"] is None and [a["strength"] for a in side["adapters"]] == [0.5, 0.5]


@pytest.mark.slow
def test_a_mix_of_adapters_from_different_layouts_is_refused(tiny_model_dir, trained_run, tmp_path):
    run, _ = trained_run
    stereo = tmp_path / "stereo_adapter"
    shutil.copytree(run / "final_model", stereo)
    info = json.loads((stereo / "training_info.json").read_text())
    info["model"] = {**info["model"], "audio_channels": 2, "num_codebooks": 8}
    (stereo / "training_info.json").write_text(json.dumps(info))
    proc = run_script("inference_lora.py", "--model_path", tiny_model_dir, "--prompts", "x", "--lora_model_path",
                      f"{run / 'final_model'}:0.5", f"{stereo}:0.5", "--output_dir", tmp_path / "out", check=False)
    assert_one_line_error(proc, "--lora_model_path", "stereo", "mix adapters trained on one base model")


@pytest.mark.slow
def test_evaluate_ranks_strengths_of_one_adapter_side_by_side(tiny_model_dir, trained_run, example_data_dir,
                                                              tmp_path):
    run, _ = trained_run
    out = tmp_path / "eval"
    proc = run_script("evaluate.py", "--model_path", tiny_model_dir, "--compare", "--lora_model_path",
                      run / "final_model", "--lora_scales", 0, 0.5, 1, "--data_dir", example_data_dir,
                      "--target_duration", 6, "--prompts", "dark trap 808", "--duration", 0.5, "--seed", 3,
                      "--output_dir", out, "--no_progress")
    summary = json.loads((out / "summary.json").read_text())
    models = summary["models"]
    assert list(models) == ["base_model", "lora_model@0", "lora_model@0.5", "lora_model@1"]
    assert [models[n]["lora_scale"] for n in models] == [None, 0.0, 0.5, 1.0]
    loss = [models[n]["held_out_loss"] for n in models]
    assert loss[1] == loss[0]  # strength 0 is the base model, to the last bit
    assert loss[1] > loss[2] > loss[3]  # and the held-out loss falls with strength on this trained adapter
    assert sum("lora_model@" in line for line in proc.stdout.splitlines()) == 3  # a verdict per strength
    side = json.loads((out / "lora_model@0.5" / "00_dark-trap-808.json").read_text())
    assert side["lora_scale"] == 0.5
    assert 'id="strengths"' in (out / "report.html").read_text()
    from musicgen_lora.evaluation.listening import read_key

    blind = {c["model"] for g in read_key(out)["groups"] for c in g["clips"].values()}
    assert blind == set(models)  # the blind page puts every strength beside the base model
    card = (run / "final_model" / "README.md").read_text()
    assert "at strength 0.5: held-out loss" in card


@pytest.mark.slow
def test_evaluate_compares_mixes_beside_their_adapters(tiny_model_dir, trained_run, example_data_dir, tmp_path):
    run, _ = trained_run
    first, second = run / "final_model", run / "checkpoints" / "checkpoint-2"
    out = tmp_path / "eval"
    proc = run_script("evaluate.py", "--model_path", tiny_model_dir, "--adapter", f"first={first}", "--adapter",
                      f"second={second}", "--mix", f"all-first={first}:1,{second}:0", "--mix",
                      f"half={first}:0.5,{second}:0.5", "--data_dir", example_data_dir, "--target_duration", 6,
                      "--prompts", "dark trap 808", "--duration", 0.5, "--seed", 3, "--output_dir", out,
                      "--no_progress")
    models = json.loads((out / "summary.json").read_text())["models"]
    assert list(models) == ["base_model", "first", "second", "all-first", "half"]
    loss = {n: m["held_out_loss"] for n, m in models.items()}
    assert loss["first"] != loss["second"]  # the control: the two adapters differ
    assert loss["all-first"] == loss["first"]  # a mix at 1/0 is the first adapter, to the last bit
    assert len({loss["half"], loss["first"], loss["second"], loss["base_model"]}) == 4  # 0.5/0.5 is neither
    half = models["half"]
    assert half["adapter_path"] is None and half["lora_scale"] is None and half.get("run_id") is None
    assert [(m["path"], m["strength"]) for m in half["mix"]] == [(str(first), 0.5), (str(second), 0.5)]
    side = json.loads((out / "half" / "00_dark-trap-808.json").read_text())
    assert side["adapter"] is None and [m["strength"] for m in side["mix"]] == [0.5, 0.5]
    assert sum(line.startswith(("all-first", "half")) for line in proc.stdout.splitlines()) >= 2  # verdicts
    from musicgen_lora.evaluation.listening import read_key

    assert {c["model"] for g in read_key(out)["groups"] for c in g["clips"].values()} == set(models)
    # the adapters' cards: a mix is another model compared, never a base verdict; no card is a mix's
    card = (first / "README.md").read_text()
    assert "half" in card and "all-first" in card


@pytest.mark.slow
def test_a_mix_at_several_strengths_runs_each_in_one_bank(tiny_model_dir, trained_run):
    """--mix with --lora_scales: NAME@0.5 must be a name PEFT takes, and each strength scales the weights."""
    from musicgen_lora.evaluation.compare import ModelBank, resolve_models

    run, _ = trained_run
    first, second = run / "final_model", run / "checkpoints" / "checkpoint-2"
    specs = resolve_models(adapters=[f"first={first}"], mixes=[f"m={first}:1,{second}:1"], scales=[0.5, 1])
    assert [s.name for s in specs] == ["base_model", "first@0.5", "first@1", "m@0.5", "m@1"]
    base, processor = load_model_and_processor(str(tiny_model_dir))
    bank = ModelBank(base, specs)
    inputs = processor(text=["trap beat"], return_tensors="pt")
    dec = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    logits = {}
    for spec in specs:
        with bank.use(spec) as m, torch.no_grad():
            logits[spec.name] = m(**inputs, decoder_input_ids=dec).logits
    assert list(bank.strengths(specs[3]).values()) == [0.5, 0.5]
    assert len(bank.names) == 2  # the first adapter loaded once, shared by first@S and the mix
    assert not torch.equal(logits["m@0.5"], logits["m@1"]) and not torch.equal(logits["m@1"], logits["first@1"])


def test_mix_flags_are_checked_in_one_line(tiny_model_dir, trained_run, tmp_path):
    run, _ = trained_run
    first, second = run / "final_model", run / "checkpoints" / "checkpoint-2"
    common = ("--model_path", tiny_model_dir, "--prompts", "x", "--output_dir", tmp_path / "o")
    for value, needles in ((f"{first}:1,{second}:1", ("--mix", "NAME=FOLDER:WEIGHT")),
                           (f"one={first}:0.5", ("--mix", "two adapters or more")),
                           (f"twice={first}:0.5,{first}:0.5", ("--mix", "twice")),
                           (f"neg={first}:-1,{second}:1", ("--mix neg=", "0 or more")),
                           (f"gone={first}:1,{tmp_path / 'missing'}:1", ("missing",))):
        proc = run_script("evaluate.py", *common, "--mix", value, check=False)
        assert_one_line_error(proc, *needles)


def test_strength_flags_are_checked_in_one_line(tiny_model_dir, tmp_path):
    common = ("--model_path", tiny_model_dir, "--prompts", "x", "--output_dir", tmp_path / "o")
    adapter = tmp_path / "adapter"  # refused before any folder is read
    proc = run_script("evaluate.py", *common, "--compare", "--lora_model_path", adapter, "--lora_scale", 0.5,
                      "--lora_scales", 1, 2, check=False)
    assert_one_line_error(proc, "--lora_scales")
    proc = run_script("evaluate.py", *common, "--compare", "--lora_model_path", adapter, "--lora_scales", 1, 1,
                      check=False)
    assert_one_line_error(proc, "each strength once")
    proc = run_script("evaluate.py", *common, "--lora_scales", 0.5, 1, check=False)
    assert_one_line_error(proc, "--lora_scales", "pass the adapter too")
    proc = run_script("inference_lora.py", *common, "--lora_scale", 0.5, check=False)
    assert_one_line_error(proc, "--lora_scale", "--lora_model_path")
    proc = run_script("inference_lora.py", *common, "--lora_scale", -1, check=False)
    assert_one_line_error(proc, "--lora_scale")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ADAPTER_TYPES)
def test_each_adapter_type_learns_and_round_trips(kind, tiny_model_dir, tmp_path):
    """--adapter_type KIND through train_lora.py: two clips memorised for 60 steps. The control is
    the base model's loss on the same clips (an ignored adapter would stay there); the saved folder is
    a plain PEFT folder of that type, loads back to the loss it trained to, merges (--merge) to the
    same logits, and at strength 0 is the base model (not DoRA: its magnitudes are not scaled)."""
    from musicgen_lora.cli.train import main as train
    from musicgen_lora.model.lora import adapter_type_of, load_adapter, set_strengths

    from tunes import two_tunes

    data = two_tunes(tmp_path / "data", 2.0)
    run = tmp_path / "run"
    assert train(["--model_path", str(tiny_model_dir), "--data_dir", str(data), "--output_dir", str(run),
                  "--adapter_type", kind, "--target_duration", "2", "--batch_size", "2",
                  "--gradient_accumulation_steps", "1", "--max_steps", "60", "--learning_rate", "3e-3",
                  "--lora_rank", "8", "--lora_alpha", "16", "--lora_dropout", "0", "--text_dropout", "0",
                  "--word_dropout", "0", "--warmup_steps", "0", "--save_steps", "0", "--logging_steps", "30",
                  "--no_progress"]) == 0
    adapter = run / "final_model"
    assert adapter_type_of(adapter) == kind
    base, processor = load_model_and_processor(str(tiny_model_dir))
    loader, _ = validation_loader(processor, base, data, "metadata.json", 2.0, 2, valid_ratio=0.0)
    base_loss = evaluate_loss(base, loader, progress=False)["loss"]
    model = load_adapter(base, str(adapter)).eval()
    loss = evaluate_loss(model, loader, progress=False)["loss"]
    print(f"{kind}: base {base_loss:.4f} -> trained {loss:.4f}")
    assert loss < base_loss - 1.0, (base_loss, loss)

    inputs = processor(text=["a synth tune"], return_tensors="pt")
    dec = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(**inputs, decoder_input_ids=dec).logits
        with model.disable_adapter():
            plain = model(**inputs, decoder_input_ids=dec).logits
        set_strengths(model, {"default": 0.0})
        zero = model(**inputs, decoder_input_ids=dec).logits
    assert (want - plain).abs().max() > 1e-2
    if kind != "dora":
        torch.testing.assert_close(zero, plain, atol=1e-6, rtol=0)
    run_script("inference_lora.py", "--model_path", tiny_model_dir, "--lora_model_path", adapter, "--merge",
               "--output_dir", tmp_path / "merged")
    merged = MusicgenForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        got = merged(**inputs, decoder_input_ids=dec).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_a_resume_keeps_the_adapter_type(tiny_model_dir, example_data_dir, tmp_path):
    """rsLoRA's weights load into LoRA's layers without an error and would train at another scale:
    a resume with another --adapter_type is refused in one line, before any weight is touched."""
    out = tmp_path / "run"
    args = ("--model_path", tiny_model_dir, "--data_dir", example_data_dir, "--output_dir", out, "--batch_size", 4,
            "--gradient_accumulation_steps", 1, "--target_duration", 2, "--save_steps", 1, "--no_progress")
    run_script("train_lora.py", *args, "--max_steps", 2)
    proc = run_script("train_lora.py", *args, "--max_steps", 4, "--resume_from_checkpoint", "latest",
                      "--adapter_type", "rslora", check=False)
    assert_one_line_error(proc, "adapter_type: lora -> rslora")


@pytest.mark.slow
def test_a_mix_moves_from_one_adapter_to_the_other_with_its_weights(tiny_model_dir, trained_run):
    """Mix w x first + (1 - w) x second: as w falls from 1 to 0 the logits move steadily away from the
    first adapter's and towards the second's (an ignored weight would leave them in one place)."""
    from musicgen_lora.model.lora import set_strengths

    run, _ = trained_run
    first, second = str(run / "final_model"), str(run / "checkpoints" / "checkpoint-2")
    base, processor = load_model_and_processor(str(tiny_model_dir))
    model = load_weighted(base, [(first, 1.0), (second, 0.0)]).eval()
    inputs = processor(text=["trap beat"], return_tensors="pt")
    dec = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))

    def logits(w):
        set_strengths(model, {"default": w, "mix1": 1.0 - w})
        with torch.no_grad():
            return model(**inputs, decoder_input_ids=dec).logits

    weights = (1.0, 0.75, 0.5, 0.25, 0.0)
    at = [logits(w) for w in weights]
    to_first = [(x - at[0]).abs().mean().item() for x in at]
    to_second = [(x - at[-1]).abs().mean().item() for x in at]
    assert all(a < b for a, b in zip(to_first, to_first[1:])), to_first
    assert all(a > b for a, b in zip(to_second, to_second[1:])), to_second
