"""Model cards: every best_model/ and final_model/ gets a hub-style README.md from train_lora.py, and
evaluate.py adds its verdicts to it; a user's own README.md is never replaced, and a card that cannot
be written is a warning, never a failed run."""
import errno
import json
import logging
import os
import shutil
import stat
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

import musicgen_lora.core.outputs as outputs
import musicgen_lora.reporting.model_card as model_card

from conftest import run_script

EVAL_SECONDS = 1


def front_matter(text: str) -> dict:
    assert text.startswith("---\n"), text[:80]
    head, _body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head)


def card(folder) -> str:
    return (folder / "README.md").read_text(encoding="utf-8")


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def run(tiny_model_dir, example_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "run"
    run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", example_data_dir, "--output_dir", out,
               "--num_epochs", 2, "--batch_size", 4, "--gradient_accumulation_steps", 1, "--learning_rate", 3e-3,
               "--warmup_steps", 0, "--logging_steps", 1, "--save_steps", 2, "--target_duration", 2, "--no_progress")
    return out


def evaluate(model, run_dir, out, *extra):
    return run_script("evaluate.py", "--base_model_path", model, "--lora_model_path", run_dir, "--compare_multi",
                      "--test_prompts", "lofi beat", "--duration", EVAL_SECONDS, "--output_dir", out,
                      "--no_progress", *extra)


# --------------------------------------------------------------------------------------------
# Written by training
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["best_model", "final_model"])
def test_training_writes_a_hub_card_with_the_runs_numbers(run, tiny_model_dir, example_data_dir, name):
    folder = run / name
    text = card(folder)
    meta = front_matter(text)
    peft_config = _json(folder / "adapter_config.json")
    # What the hub reads; base_model the same value peft records in adapter_config.json.
    assert meta["base_model"] == peft_config["base_model_name_or_path"] == str(tiny_model_dir)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-to-audio"
    assert {"musicgen", "lora", "text-to-audio"} <= set(meta["tags"]) and "stereo" not in meta["tags"]
    assert "license" not in meta  # not known here: said in prose instead
    hub = ModelCard.load(folder / "README.md")  # huggingface_hub's own reader
    assert hub.data.base_model == meta["base_model"] and hub.data.library_name == "peft"
    # peft's template is replaced, not appended to.
    assert "Model Card for Model ID" not in text and "More Information Needed" not in text
    assert text.count("\n---\n") == 1 and model_card.MARKER in text
    info, config = _json(folder / "training_info.json"), _json(run / "run_config.json")
    summary = _json(run / "logs" / "summary.json")
    assert f"| this adapter ({name}) | {info['step']} | {info['valid_loss']:.4f} |" in text
    assert f"| base model, before training | 0 | {summary['base_valid_loss']:.4f} |" in text
    assert f"| best of the run (best_model) | {summary['best_step']} | {summary['best_valid_loss']:.4f} |" in text
    # best_model was saved before the run ended; its card is brought up to date when final_model is saved.
    assert f"| end of the run (final_model) | {summary['steps']} | {summary['final_valid_loss']:.4f} |" in text
    assert f"| uniform guess ln(64) | | {summary['uniform_loss']:.4f} |" in text
    clips = _json(example_data_dir / "metadata.json")  # the example set records each clip's duration
    for split, key, n in (("train", "train", config["train_clips"]), ("valid", "validation", config["valid_clips"])):
        minutes = sum(c["duration"] for c in clips[split]) / 60
        assert len(clips[split]) == n and f"- {key}: {n} clips, {minutes:.1f} min\n" in text
    for needle in (f"rank {config['lora_rank']}, alpha {config['lora_alpha']}, dropout {config['lora_dropout']}",
                   f"learning rate {config['learning_rate']:g}", f"seed | {config['seed']}",
                   f"text {config['text_dropout']:g}, words {config['word_dropout']:g}", info["run_id"],
                   "fp32 on cpu", "Not evaluated yet"):
        assert needle in text, needle
    assert "was at step" not in text  # the run's end is known in both cards
    # The kept data reads back, and the file's mode follows the umask like any plain file.
    _, kept = model_card.read_card(folder)
    assert kept["adapter"]["step"] == info["step"] and kept["evaluations"] == []
    assert stat.S_IMODE(os.stat(folder / "README.md").st_mode) == 0o666 & ~outputs.current_umask()


def test_adapter_with_card_still_loads_with_peft(run, tiny_model_dir):
    from peft import PeftModel
    from safetensors.torch import load_file

    from musicgen_lora.model.checkpoint import load_model_and_processor

    model, _ = load_model_and_processor(str(tiny_model_dir))
    peft_model = PeftModel.from_pretrained(model, str(run / "best_model"))
    saved = load_file(str(run / "best_model" / "adapter_model.safetensors"))
    loaded = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert len(saved) == len(loaded) > 0


def test_checkpoint_cards_are_peft_templates_until_evaluated(run, tmp_path):
    """Checkpoints keep peft's template (no card at each --save_steps); an update (evaluate.py on a
    checkpoint) replaces it, saying the checkpoint's own validation loss was not measured."""
    text = card(run / "checkpoints" / "checkpoint-2")
    assert model_card.MARKER not in text and model_card.is_ours(text)
    shutil.copy(run / "run_config.json", tmp_path / "run_config.json")
    copy = tmp_path / "checkpoints" / "checkpoint-2"
    shutil.copytree(run / "checkpoints" / "checkpoint-2", copy)
    assert model_card.update_card(copy)
    text = card(copy)
    assert "| this adapter (checkpoint-2) | 2 | unknown |" in text and "not measured" in text
    assert f"run directory: `{tmp_path}`" in text


# --------------------------------------------------------------------------------------------
# Updated by evaluation
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluations_add_their_verdicts_newest_first(run, tiny_model_dir, tmp_path):
    # Two more adapters: a copy carrying the user's own README.md, and one not written by train_lora.py.
    mine, foreign = tmp_path / "mine", tmp_path / "foreign"
    shutil.copytree(run / "best_model", mine)
    (mine / "README.md").write_text("# my adapter\n\nnotes I wrote by hand\n")
    shutil.copytree(run / "final_model", foreign)
    (foreign / "training_info.json").unlink()
    (foreign / "README.md").unlink()

    first = evaluate(tiny_model_dir, run, run / "evaluation", "--adapter", f"mine={mine}",
                     "--adapter", f"foreign={foreign}")
    summary = _json(run / "evaluation" / "summary.json")
    for name in ("best_model", "final_model"):
        text = card(run / name)
        verdict = summary["models"][name]["verdict"]
        assert verdict.startswith(f"{name}: ") and "held-out loss" in verdict
        assert f"- this adapter: `{verdict}`" in text
        assert f"- base model, same prompts: `{summary['models']['base_model']['verdict']}`" in text
        assert str(run / "evaluation") in text and "Not evaluated yet" not in text
        assert front_matter(text)["library_name"] == "peft"
    assert card(mine) == "# my adapter\n\nnotes I wrote by hand\n"  # never replaced
    assert f"note: {mine / 'README.md'} is not a card this toolkit wrote" in first.stderr
    assert not (foreign / "README.md").exists()  # not a train_lora.py adapter: no card

    evaluate(tiny_model_dir, run, run / "evaluation_b")
    _, kept = model_card.read_card(run / "best_model")
    assert [os.path.basename(e["folder"]) for e in kept["evaluations"]] == ["evaluation_b", "evaluation"]
    text = card(run / "best_model")
    assert text.index(str(run / "evaluation_b")) < text.index(f"{run / 'evaluation'}`")

    # The same folder again replaces its entry (and is now the newest).
    evaluate(tiny_model_dir, run, run / "evaluation", "--overwrite")
    _, kept = model_card.read_card(run / "final_model")
    assert [os.path.basename(e["folder"]) for e in kept["evaluations"]] == ["evaluation", "evaluation_b"]
    assert kept["evaluations"][0]["verdict"] == _json(run / "evaluation" / "summary.json")["models"]["final_model"][
        "verdict"]

    # A tallied blind test of that evaluation goes into each rated adapter's card, and only there.
    key = _json(run / "evaluation" / "listening_key.json")
    taste = {"best_model": 5, "final_model": 4, "base_model": 1}
    for who in ("ana", "ben"):
        groups = {g["id"]: {"ratings": {letter: taste[c["model"]] for letter, c in g["clips"].items()}, "note": ""}
                  for g in key["groups"]}
        (run / "evaluation" / "ratings").mkdir(exist_ok=True)
        (run / "evaluation" / "ratings" / f"{who}.json").write_text(json.dumps(
            {"evaluation_id": key["evaluation_id"], "listener": who, "session": who, "groups": groups}))
    tally = run_script("evaluate.py", "--tally", run / "evaluation")
    assert "best_model: listening result added to the model card" in tally.stderr
    _, kept = model_card.read_card(run / "best_model")
    assert [t["source"] for t in kept["listening"]] == [str(run / "evaluation")]
    text = card(run / "best_model")
    assert "## Listening tests" in text and "- mean rating 5.00" in text
    # One prompt x two listeners: two paired units, too few to call even a 4-point gap.
    assert "- best_model and base_model: cannot separate (too few paired units): difference +4.00" in text


# --------------------------------------------------------------------------------------------
# Never a failure, never half a file, never someone else's file
# --------------------------------------------------------------------------------------------
@pytest.fixture
def adapter(run, tmp_path):
    """A copy of best_model in a run dir of its own (the card's numbers still found)."""
    shutil.copy(run / "run_config.json", tmp_path / "run_config.json")
    shutil.copytree(run / "logs", tmp_path / "logs")
    shutil.copytree(run / "best_model", tmp_path / "best_model")
    return tmp_path / "best_model"


def _no_temps(folder):
    return [n for n in os.listdir(folder) if n.startswith(".README.md")] == []


def test_a_card_that_cannot_be_written_is_a_warning(adapter, monkeypatch, caplog):
    before = card(adapter)

    def refuse(path, text):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(model_card, "atomic_write_text", refuse)
    with caplog.at_level(logging.WARNING, logger="musicgen_lora"):
        assert model_card.update_card(adapter, evaluation={"folder": "/x", "date": "2030-01-01T00:00:00+00:00"}) \
            is False
    assert "model card not updated (PermissionError" in caplog.text
    assert card(adapter) == before


def test_a_write_that_fails_midway_leaves_the_old_card_whole(adapter, monkeypatch, caplog):
    before = card(adapter)

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", full)
    with caplog.at_level(logging.WARNING, logger="musicgen_lora"):
        assert model_card.update_card(adapter, evaluation={"folder": "/x", "date": "2030-01-01T00:00:00+00:00"}) \
            is False
    monkeypatch.undo()
    assert "model card not updated" in caplog.text and "no space left" in caplog.text
    assert card(adapter) == before and _no_temps(adapter)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_adapter_folder_is_a_warning(adapter, caplog):
    os.chmod(adapter, 0o555)
    try:
        with caplog.at_level(logging.WARNING, logger="musicgen_lora"):
            assert model_card.update_card(adapter, listening={"source": "/x", "lines": ["a"]}) is False
    finally:
        os.chmod(adapter, 0o755)
    assert "model card not updated" in caplog.text


# train_lora.py's own main() with every card write refused: the run still succeeds, with a warning.
NO_CARDS = """
import errno, sys
import musicgen_lora.reporting.model_card as model_card
from musicgen_lora.cli.train import main

def refuse(path, text):
    raise PermissionError(errno.EACCES, "Permission denied", str(path))

model_card.atomic_write_text = refuse
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_training_succeeds_when_no_card_can_be_written(tiny_model_dir, example_data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["--model_path", tiny_model_dir, "--data_dir", example_data_dir, "--output_dir", out, "--num_epochs", 1,
            "--batch_size", 4, "--gradient_accumulation_steps", 1, "--target_duration", 2, "--no_progress"]
    proc = subprocess.run([sys.executable, "-c", NO_CARDS, *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"warning: {out / 'final_model' / 'README.md'}: model card not written (PermissionError" in proc.stderr
    for name in ("best_model", "final_model"):
        assert (out / name / "adapter_model.safetensors").is_file()
        assert model_card.MARKER not in card(out / name)  # peft's template stays, whole
        assert _no_temps(out / name)


def test_a_users_readme_is_left_alone(adapter, caplog):
    (adapter / "README.md").write_text("---\nlicense: mit\n---\n# mine\n")
    with caplog.at_level(logging.INFO, logger="musicgen_lora"):
        assert model_card.update_card(adapter, evaluation={"folder": "/e", "date": "2030-01-01T00:00:00+00:00"}) \
            is False
    assert card(adapter) == "---\nlicense: mit\n---\n# mine\n"
    assert "is not a card this toolkit wrote; left as it is" in caplog.text


# --------------------------------------------------------------------------------------------
# The file itself
# --------------------------------------------------------------------------------------------
def test_odd_paths_are_quoted_and_read_back(adapter):
    """YAML specials in base_model, and '--' / '-->' in paths (which would end an HTML comment)."""
    odd = "models/x: y #1 -->'\"--"
    config = _json(adapter / "adapter_config.json")
    config["base_model_name_or_path"] = odd
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    entry = {"folder": "/evals/a--b-->c `d`", "date": "2030-01-02T03:04:05+00:00", "model": "best_model",
             "verdict": "best_model: 0/1 fade out"}
    assert model_card.update_card(adapter, evaluation=entry)
    text = card(adapter)
    assert front_matter(text)["base_model"] == odd
    _, kept = model_card.read_card(adapter)
    assert kept["base_model"] == odd and kept["evaluations"][0]["folder"] == entry["folder"]
    # The hidden data is one comment on the last line: no "--" inside it could end it early.
    last = text.rstrip("\n").splitlines()[-1]
    assert last.startswith("<!-- musicgen_lora card data") and last.endswith(" -->")
    assert "--" not in last[len("<!--"):-len("-->")]


def test_listening_tests_are_kept_one_per_source(adapter):
    assert model_card.update_card(adapter, listening={"source": "/listen/a", "date": "2030-01-01T00:00:00+00:00",
                                                      "lines": ["best_model preferred in 14/20 pairs"]})
    assert model_card.update_card(adapter, listening={"source": "/listen/a", "date": "2030-01-03T00:00:00+00:00",
                                                      "lines": ["best_model preferred in 15/20 pairs"]})
    assert model_card.update_card(adapter, listening={"source": "/listen/b", "date": "2030-01-02T00:00:00+00:00",
                                                      "lines": "a single line"})
    text = card(adapter)
    assert "## Listening tests" in text and "14/20" not in text
    assert text.index("15/20") < text.index("- a single line")  # newest first
    _, kept = model_card.read_card(adapter)
    # (the run's own blind test, tallied by an earlier test of this module, stays beside them)
    assert [t["source"] for t in kept["listening"] if t["source"].startswith("/listen/")] == ["/listen/a", "/listen/b"]


def test_melody_stereo_hub_checkpoint_card():
    """Tags follow the layout; a hub id needs no "set base_model" hint; a known size is named."""
    layout = {"model_type": "musicgen_melody", "num_codebooks": 8, "audio_channels": 2, "vocab_size": 2048,
              "hidden_size": 1536, "num_hidden_layers": 48}
    data = {"name": "final_model", "path": "/runs/r/final_model", "run_dir": "/runs/r",
            "base_model": "facebook/musicgen-stereo-melody", "adapter": {"step": 10, "valid_loss": 5.0},
            "layout": layout, "config": {"chroma_dropout": 0.5, "text_dropout": 0.2, "word_dropout": 0.2},
            "outcome": {}, "data": {}, "evaluations": [], "listening": []}
    text = model_card.render(data)
    meta = front_matter(text)
    assert meta["base_model"] == "facebook/musicgen-stereo-melody"
    assert {"musicgen-melody", "stereo"} <= set(meta["tags"])
    assert "local path" not in text and "MusicgenMelodyForConditionalGeneration.from_pretrained(" in text
    assert "MusicGen-Melody, melody (stereo), 8 codebooks, decoder 1536 wide x 48 layers (the musicgen-medium " \
           "size)" in text
    assert "text 0.2, words 0.2, melody 0.5" in text and "| base model, before training | 0 | unknown |" in text


def test_umask_is_respected(adapter):
    old = os.umask(0o027)
    try:
        assert model_card.update_card(adapter, listening={"source": "/l", "lines": ["x"]})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(adapter / "README.md").st_mode) == 0o640


def test_a_folder_named_with_the_cards_data_marker_keeps_its_evaluations(adapter):
    """The kept data was found by the first marker in the file: a path holding the marker text, shown in
    the card's body, hid the real data, and the next update dropped every earlier evaluation."""
    _, kept = model_card.read_card(adapter)
    kept["evaluations"] = [{"name": "evaluation", "verdict": "kept"}]
    kept["path"] = str(adapter.parent / f"odd {model_card._DATA}{{\"x\": 1}} --> name")
    kept["run_dir"] = kept["path"]
    (adapter / "README.md").write_text(model_card.render(kept), encoding="utf-8")
    assert model_card._DATA in card(adapter).split("\n---\n", 1)[1].rsplit(model_card._DATA, 1)[0]  # in the body
    _, again = model_card.read_card(adapter)
    assert again == json.loads(json.dumps(kept, default=str))
