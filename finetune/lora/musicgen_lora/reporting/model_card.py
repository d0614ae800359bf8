"""The model card: README.md in every adapter folder train_lora.py writes (best_model/, final_model/), in
the form the Hugging Face hub reads -- YAML front matter (base_model, library_name: peft, tags,
pipeline_tag) and a body saying what the adapter is and how to load it, its base checkpoint, data,
settings, validation losses, and the verdicts of every evaluation of it, newest first.

Who writes it: train_lora.py inside the adapter's temp folder before the rename (`write_training_card`,
replacing the template peft's save_pretrained leaves there), and evaluate.py after each evaluation
(`update_evaluated_cards` -> `update_card`). Listening tests can be added with
`update_card(folder, listening=...)`.

How it is kept:
- Numbers come from the files train_lora.py leaves (the adapter's training_info.json, the run's
  run_config.json and logs/summary.json) and, while training, from the trainer itself; what none
  of them says is "unknown". The card also keeps what it was built from as JSON in an HTML comment
  at its end (invisible on the hub), so an update can rebuild it after the run dir has gone.
- Ownership: README.md is written only when it is absent, is peft's unfilled template, or carries
  MARKER (a card written here). A user's own README.md is never replaced: one note says so.
- Every write is atomic (outputs.atomic_write_text: temp file, one rename, the user's umask), and
  a card that cannot be written is one warning line: it never fails training or an evaluation.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from musicgen_lora.core.common import log, parse_json
from musicgen_lora.core.outputs import atomic_write_text
from musicgen_lora.evaluation.report import is_base_entry
from musicgen_lora.model.targets import ADAPTER_NAMES

CARD = "README.md"
FORMAT = 1
# First line of the body of every card written here: what makes the file ours to rewrite.
MARKER = "<!-- musicgen_lora model card"
_MARKER_LINE = (f"{MARKER}: written by train_lora.py, updated by evaluate.py. They rewrite this file; "
                f"delete this line to make it yours, and they will leave it alone. -->")
_DATA = "<!-- musicgen_lora card data (read back when the card is updated): "
# peft's save_pretrained writes huggingface_hub's template card into every adapter folder; unfilled, it
# is ours to replace.
_PEFT_TEMPLATE = ("# Model Card for Model ID", "[More Information Needed]")

# run_config.json keys the card shows (and keeps, for updates after the run dir has gone).
CONFIG_KEYS = (
    "run_id", "model_path", "data_dir", "metadata_file", "as_given", "config",
    "adapter_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "trainable_parameters",
    "total_parameters",
    "learning_rate", "weight_decay", "warmup_steps_effective", "max_grad_norm", "num_epochs", "max_steps",
    "steps_per_epoch", "total_steps", "early_stopping_patience", "batch_size", "gradient_accumulation_steps",
    "num_processes", "global_batch_size", "window_seconds", "precision", "device", "gradient_checkpointing",
    "seed", "text_dropout", "word_dropout", "chroma_dropout", "resumed_from", "train_clips", "valid_clips",
    "uniform_loss", "model_random_weights",
)
# logs/summary.json keys (the same names the trainer passes while it runs).
OUTCOME_KEYS = ("base_valid_loss", "best_valid_loss", "best_step", "final_valid_loss", "steps", "epochs",
                "total_steps", "uniform_loss", "stopped_reason", "wall_seconds", "finished")


# --------------------------------------------------------------------------------------------
# Entry points: training, evaluation, listening tests
# --------------------------------------------------------------------------------------------
def write_training_card(path: Path, live: dict, folder: Path | None = None) -> bool:
    """train_lora.py's card for the adapter at `path`, written into `folder` (atomic_dir's temp
    folder while saving, after training_info.json; default `path` itself). live: what the trainer
    knows while it runs (training.trainer.card_facts: the losses -- logs/summary.json is not written
    yet -- and the clips). Never raises: a failure is one warning line."""
    try:
        with contextlib.nullcontext() if folder is not None else _folder_lock(Path(path)):
            return _write(Path(folder or path), Path(path), live=live)
    except Exception as e:  # the adapter matters, its card does not: never fail a save for it
        log.warning(f"warning: {Path(path) / CARD}: model card not written ({type(e).__name__}: {e})")
        return False


def update_card(adapter_dir: Path, evaluation: dict | None = None, listening: dict | None = None) -> bool:
    """Rewrite the card of a train_lora.py adapter folder with the run's latest numbers and, when
    given, one more evaluation (an `evaluation_entry`, replacing the entry of the same folder) or
    listening test (a dict with "source" -- a folder or file, its key: a new test of the same source
    replaces the old -- "date", and "lines": what to show, e.g. ["best_model preferred in 14/20
    pairs"]; any other keys are kept). True when written; never raises."""
    adapter_dir = Path(adapter_dir)
    try:
        with _folder_lock(adapter_dir):
            return _write(adapter_dir, adapter_dir, evaluation=evaluation, listening=listening)
    except Exception as e:
        log.warning(f"warning: {adapter_dir / CARD}: model card not updated ({type(e).__name__}: {e})")
        return False


def update_evaluated_cards(summary: dict, out: Path):
    """evaluate.py: add this evaluation's verdicts (its summary.json, in `out`) to the card of every
    adapter it evaluated that train_lora.py wrote (a folder with training_info.json: best_model/,
    final_model/, a checkpoint, or any of them passed as --adapter NAME=PATH). Other adapters are left
    alone. Never raises."""
    done = set()
    for name, model in (summary.get("models") or {}).items():
        folder = model.get("adapter_path") if isinstance(model, dict) else None
        if folder is None or folder in done:  # one entry per adapter: its strengths (--lora_scales) inside
            continue
        done.add(folder)
        if not (Path(folder) / "training_info.json").is_file():
            log.info(f"note: {folder} has no training_info.json (not written by train_lora.py): no model card "
                     f"written there")
            continue
        try:
            entry = evaluation_entry(name, summary, out)
        except Exception as e:
            log.warning(f"warning: {Path(folder) / CARD}: model card not updated ({type(e).__name__}: {e})")
            continue
        if update_card(folder, evaluation=entry):
            log.info(f"{name}: verdict added to the model card {Path(folder) / CARD}")


def evaluation_entry(name: str, summary: dict, out: Path) -> dict:
    """What a card keeps of one evaluation (compare_models' summary.json) for the model `name`."""
    models = summary.get("models") or {}
    mine = models.get(name) or {}
    settings = summary.get("settings") or {}
    # The same adapter at several strengths (--lora_scales): each strength's numbers, and the verdict at 1
    same = {n: m for n, m in models.items() if m.get("adapter_path") and m.get("adapter_path") ==
            mine.get("adapter_path")}
    strengths = [{"model": n, "lora_scale": m.get("lora_scale"), "verdict": m.get("verdict"),
                  "held_out_loss": m.get("held_out_loss"), "fad": m.get("fad")} for n, m in same.items()]
    if len(same) > 1:
        name = next((n for n, m in same.items() if m.get("lora_scale") == 1.0), name)
        mine = models[name]
    return {"folder": os.path.abspath(out), "date": summary.get("created"), "model": name,
            "verdict": mine.get("verdict"), "lora_scale": mine.get("lora_scale"),
            "strengths": strengths if len(same) > 1 else None,
            "base_verdicts": [m.get("verdict") for n, m in models.items() if n != name and is_base_entry(m)],
            "also_compared": [n for n, m in models.items() if n not in same and not is_base_entry(m)],
            "held_out_loss": mine.get("held_out_loss"), "uniform_loss": mine.get("uniform_loss"),
            "fad": mine.get("fad"), "flag_counts": mine.get("flag_counts"), "num_clips": mine.get("num_clips"),
            "num_prompts": summary.get("num_prompts"), "duration": settings.get("duration"),
            "base_model": summary.get("base_model")}


# --------------------------------------------------------------------------------------------
# Reading, gathering, writing
# --------------------------------------------------------------------------------------------
def read_card(folder: Path) -> tuple[str | None, dict | None]:
    """(README.md text or None, the card data kept in it or None)."""
    path = Path(folder) / CARD
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    # The kept data is the file's last comment (render puts it there); a folder name holding the marker
    # text shows up earlier, in the body, and must not be taken for it.
    start = text.rfind(_DATA)
    end = text.rfind(" -->")
    try:
        data = parse_json(text[start + len(_DATA):end]) if 0 <= start < end else None
    except ValueError:
        data = None
    return text, data if isinstance(data, dict) else None


def is_ours(text: str | None) -> bool:
    """May the card replace this README.md? None (no file), a card written here, or peft's template."""
    return text is None or MARKER in text or all(s in text for s in _PEFT_TEMPLATE)


def _read_json(path: Path) -> dict:
    try:
        data = parse_json(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def find_run_dir(adapter: Path, run_id: str | None) -> Path | None:
    """The training run an adapter folder sits in (best_model/ in it, or checkpoints/checkpoint-N/),
    when its run_config.json names the adapter's run id (a folder copied elsewhere has none)."""
    for d in (adapter.parent, adapter.parent.parent):
        config = _read_json(d / "run_config.json")
        if config and (run_id is None or config.get("run_id") in (None, run_id)):
            return d
    return None


def _write(folder: Path, path: Path, live: dict | None = None, evaluation: dict | None = None,
           listening: dict | None = None) -> bool:
    """Gather, render and write the card of the adapter at `path` into `folder` (see write_training_card)."""
    text, kept = read_card(folder)
    if not is_ours(text):
        log.info(f"note: {path / CARD} is not a card this toolkit wrote; left as it is"
                 + (f" (this evaluation is in {evaluation['folder']})" if evaluation else ""))
        return False
    data = gather(folder, path, kept or {}, live or {})
    if evaluation is not None:
        data["evaluations"] = _merge(data["evaluations"], evaluation, "folder")
    if listening is not None:
        if not listening.get("source"):
            raise ValueError("a listening test needs its 'source' (the folder or file it was made from)")
        data["listening"] = _merge(data["listening"], {"date": _now(), **listening}, "source")
    atomic_write_text(folder / CARD, render(data))
    return True


def _merge(entries: list, new: dict, key: str) -> list:
    """One entry per `key` (a later one replaces it), newest first."""
    kept = [new] + [e for e in entries if isinstance(e, dict) and e.get(key) != new.get(key)]
    return sorted(kept, key=lambda e: str(e.get("date") or ""), reverse=True)  # stable: the new one first on ties


def gather(folder: Path, path: Path, kept: dict, live: dict) -> dict:
    """Everything the card shows: what the card kept, overridden by the files the run left, overridden
    by what the trainer passes while it runs (`live`: outcome, data)."""
    info = _read_json(folder / "training_info.json")
    adapter_config = _read_json(folder / "adapter_config.json")
    run_dir = find_run_dir(path, info.get("run_id"))
    config = dict(kept.get("config") or {})
    outcome = dict(kept.get("outcome") or {})
    data = dict(kept.get("data") or {})
    if run_dir is not None:
        fresh = _read_json(run_dir / "run_config.json")
        config.update({k: fresh[k] for k in CONFIG_KEYS if k in fresh})
        summary = _read_json(run_dir / "logs" / "summary.json")
        if summary:
            outcome.update({k: summary[k] for k in OUTCOME_KEYS if summary.get(k) is not None}, finished=True)
    outcome.update({k: v for k, v in (live.get("outcome") or {}).items() if v is not None})
    if live.get("data"):
        data.update(live["data"])
    elif not data.get("train") and run_dir is not None:
        data.update(data_from_config(run_dir, config))
    return {"format": FORMAT, "name": path.name, "path": os.path.abspath(path),
            "run_dir": os.path.abspath(run_dir) if run_dir is not None else kept.get("run_dir"),
            "base_model": adapter_config.get("base_model_name_or_path") or config.get("model_path")
            or kept.get("base_model"),
            "adapter": {k: info.get(k) for k in ("step", "epoch", "valid_loss", "run_id")},
            "layout": info.get("model") if isinstance(info.get("model"), dict) else kept.get("layout") or {},
            "config": config, "outcome": outcome, "data": data,
            "evaluations": list(kept.get("evaluations") or []), "listening": list(kept.get("listening") or []),
            "written": kept.get("written") or _now(), "updated": _now()}


def data_from_config(run_dir: Path, config: dict) -> dict:
    """The run's clips as its run_config.json names them (an update of a card written before)."""
    from musicgen_lora.core.paths import recorded_path
    from musicgen_lora.data.metadata import clip_facts, validation_clips
    from musicgen_lora.data.splits import load_splits

    data_dir = recorded_path(run_dir, config, "data_dir")
    if data_dir is None:
        return {}
    try:
        splits = load_splits(data_dir, config.get("metadata_file") or "metadata.json", check_files=False,
                             valid_ratio=config.get("valid_ratio", 0.1))
    except Exception:  # gone or changed since: the card says "unknown"
        return {}
    return {"train": clip_facts(splits["train"]), "valid": clip_facts(validation_clips(splits)),
            "valid_from_train": not splits["valid"]}


@contextlib.contextmanager
def _folder_lock(folder: Path, wait_s: float = 30.0):
    """Two evaluations finishing together must not lose each other's entry: an exclusive flock on
    the adapter folder itself (no lock file left in it) for the read-modify-write."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held {folder} for {wait_s:g} s") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _loss(x) -> str:
    return f"{x:.4f}" if _num(x) else "unknown"


def _val(x, unit: str = "") -> str:
    if x is None or x == "":
        return "unknown"
    if isinstance(x, bool):
        return "on" if x else "off"
    return f"{x:g}{unit}" if isinstance(x, float) else f"{x}{unit}"


def _code(x) -> str:
    """An inline code span holding any text (paths may hold backticks, underscores, asterisks)."""
    s = str(x).replace("\n", "\\n")
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def _date(iso) -> str:
    try:
        d = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso) if iso else "date unknown"
    if d.tzinfo is not None:
        d = d.astimezone(timezone.utc)
    return d.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if d.tzinfo is not None else "")


def _shell(x) -> str:
    s = str(x)
    return s if re.fullmatch(r"[\w./:=+-]+", s) else "'" + s.replace("'", "'\\''") + "'"


def front_matter(data: dict) -> dict:
    """The YAML the hub reads. No license: the base checkpoint's and the training clips' licenses
    decide it, and neither is known here (the body says so)."""
    layout = data["layout"]
    tags = ["musicgen", "lora", "text-to-audio"]
    if layout.get("model_type") == "musicgen_melody":
        tags.append("musicgen-melody")
    if layout.get("audio_channels") == 2:
        tags.append("stereo")
    meta = {"base_model": str(data["base_model"])} if data.get("base_model") else {}
    return {**meta, "library_name": "peft", "pipeline_tag": "text-to-audio", "tags": tags}


def describe_model(layout: dict) -> str:
    """'MusicGen mono, 4 codebooks, decoder 1024 wide x 24 layers (the musicgen-small size)'."""
    from musicgen_lora.model.checkpoint import describe_layout
    from musicgen_lora.model.offline import SIZES

    if not layout.get("num_codebooks"):
        return "unknown"
    kind = "MusicGen-Melody" if layout.get("model_type") == "musicgen_melody" else "MusicGen"
    text = f"{kind}, {describe_layout(layout)}"
    dec = (layout.get("hidden_size"), layout.get("num_hidden_layers"))
    size = next((n for n, s in SIZES.items() if (s["decoder"]["hidden_size"], s["decoder"]["num_hidden_layers"]) == dec
                 and n != "tiny"), None)
    return text + (f" (the musicgen-{size} size)" if size else "")


def _clips(facts: dict | None) -> str:
    if not facts or facts.get("clips") is None:
        return "unknown"
    minutes = f"{facts['minutes']:.1f} min" if _num(facts.get("minutes")) else "length unknown"
    unknown = f", {facts['unknown_length']} of unknown length" if facts.get("unknown_length") else ""
    return f"{facts['clips']} clips, {minutes}{unknown}"


def render(data: dict) -> str:
    """The whole README.md: front matter, body, and the kept data (an HTML comment)."""
    head = yaml.safe_dump(front_matter(data), sort_keys=False, allow_unicode=True, default_flow_style=False,
                          width=10_000)
    body = "\n".join([_MARKER_LINE, "", *_intro(data), *_base(data), *_data(data), *_settings(data),
                      *_losses(data), *_evaluations(data), *_listening(data), *_provenance(data)])
    # "--" would end the comment early; "\u002d" is the same character to a JSON reader.
    kept = json.dumps(data, ensure_ascii=True, separators=(",", ":"), default=str).replace("--", "-\\u002d")
    return f"---\n{head}---\n{body}\n{_DATA}{kept} -->\n"


def _intro(d: dict) -> list[str]:
    base, name, a = d.get("base_model") or "an unknown base model", d["name"], d["adapter"]
    role = {"best_model": "the adapter with the lowest validation loss of its training run",
            "final_model": "the adapter at the end of its training run"}.get(
        name, "a checkpoint of a training run" if name.startswith("checkpoint-") else "a LoRA adapter")
    run = f" `{a['run_id']}`" if a.get("run_id") else ""
    melody = d["layout"].get("model_type") == "musicgen_melody"
    cls = "MusicgenMelodyForConditionalGeneration" if melody else "MusicgenForConditionalGeneration"
    # The snippets run from anywhere: a local base as run_config.json recorded it (absolute), not as typed
    # (relative to wherever train_lora.py was started); a hub id stays as it is.
    runnable = (d.get("config") or {}).get("model_path") or base
    lines = [f"# {name}: MusicGen LoRA adapter for {_code(base)}", "",
             f"A LoRA adapter (PEFT) for {_code(base)}: {role}{run}, step {_val(a.get('step'))}, trained with the "
             f"MusicGen LoRA toolkit (`train_lora.py`). Only the decoder's LoRA weights are here; load them on the "
             f"base checkpoint.", "",
             "```python", "from peft import PeftModel", f"from transformers import {cls}",
             f"base = {cls}.from_pretrained({str(runnable)!r})",
             f"model = PeftModel.from_pretrained(base, {d['path']!r})", "```", "",
             "or generate with the toolkit (from `finetune/lora/`):", "", "```bash",
             f"python inference_lora.py --model_path {_shell(runnable)} --lora_model_path {_shell(d['path'])} \\",
             "  --prompts \"lo-fi hip hop beat, vinyl crackle\" --output_dir generated", "```", ""]
    return lines


def _base(d: dict) -> list[str]:
    c = d["config"]
    given = (c.get("as_given") or {}).get("model_path")
    lines = ["## Base checkpoint", "",
             f"- checkpoint: {_code(c.get('model_path') or d.get('base_model') or 'unknown')}"
             + (f" (given as {_code(given)})" if given else ""),
             f"- model: {describe_model(d['layout'])}"]
    if _num(c.get("total_parameters")) and _num(c.get("trainable_parameters")):
        lines.append(f"- parameters: {c['total_parameters']:,}, of which LoRA trains {c['trainable_parameters']:,} "
                     f"({100 * c['trainable_parameters'] / c['total_parameters']:.2f}%)")
    if c.get("model_random_weights"):
        lines.append("- a random-weight test model (make_tiny_model.py): its numbers test the toolkit, not music")
    base = str(d.get("base_model") or "")
    if base.startswith(("/", ".", "~")) or base.count("/") != 1:
        lines.append("- `base_model` above is a local path: before uploading to the Hugging Face hub, set it to the "
                     "hub id of this checkpoint (e.g. `facebook/musicgen-small`)")
    lines += ["- license: not set here. It follows the base checkpoint's (Meta's MusicGen weights on the hub are "
              "CC-BY-NC-4.0) and the rights to the training clips; add `license:` above once you know it.", ""]
    return lines


def _data(d: dict) -> list[str]:
    c, data = d["config"], d["data"]
    valid = _clips(data.get("valid"))
    if data.get("valid_from_train"):
        valid += " (no valid split: the first tenth of the training clips)"
    window = c.get("window_seconds")
    return ["## Training data", "",
            f"- data: {_code(c['data_dir']) if c.get('data_dir') else 'unknown'}"
            + (f" ({_code(c['metadata_file'])})" if c.get("metadata_file") else ""),
            f"- train: {_clips(data.get('train'))}",
            f"- validation: {valid}",
            f"- training window: {_val(window, ' s')} per clip (longer clips cropped, shorter ones padded; padding "
            f"is masked from the loss)", ""]


def _settings(d: dict) -> list[str]:
    c = d["config"]
    targets = c.get("lora_target_modules")
    dropouts = f"text {_val(c.get('text_dropout'))}, words {_val(c.get('word_dropout'))}"
    if c.get("chroma_dropout") is not None:
        dropouts += f", melody {_val(c.get('chroma_dropout'))}"
    if c.get("decoder_dropout") is not None:  # recorded since the decoder's own dropout became a setting
        dropouts += f"; decoder {_val(c.get('decoder_dropout'))}"
    steps = f"{_val(c.get('num_epochs'))} epoch(s) of {_val(c.get('steps_per_epoch'))} step(s), " \
            f"{_val(c.get('total_steps'))} optimizer steps in all"
    if c.get("max_steps"):
        steps += f" (--max_steps {c['max_steps']})"
    if c.get("early_stopping_patience"):
        steps += f", early stopping after {c['early_stopping_patience']} evaluations without improvement"
    kind = ADAPTER_NAMES.get(c.get("adapter_type"), "LoRA")  # runs before --adapter_type were LoRA
    rows = [(kind, f"rank {_val(c.get('lora_rank'))}, alpha {_val(c.get('lora_alpha'))}, dropout "
                     f"{_val(c.get('lora_dropout'))}, on the decoder's {_code(targets) if targets else 'unknown'}"),
            ("optimizer", f"AdamW, learning rate {_val(c.get('learning_rate'))}, weight decay "
                          f"{_val(c.get('weight_decay'))}, gradient norm clipped at {_val(c.get('max_grad_norm'))}"),
            ("schedule", f"cosine with {_val(c.get('warmup_steps_effective'))} warm-up steps"),
            ("length", steps),
            ("batch", f"{_val(c.get('batch_size'))} x {_val(c.get('gradient_accumulation_steps'))} accumulation x "
                      f"{_val(c.get('num_processes'))} process(es) = {_val(c.get('global_batch_size'))} clips per "
                      f"step"),
            ("window", _val(c.get("window_seconds"), " s")),
            ("precision", f"{_val(c.get('precision'))} on {_val(c.get('device'))}, gradient checkpointing "
                          f"{_val(c.get('gradient_checkpointing'))}"),
            ("seed", _val(c.get("seed"))),
            ("conditioning dropout", dropouts)]
    if c.get("resumed_from"):
        rows.append(("resumed from", _code(c["resumed_from"])))
    if c.get("config"):
        rows.append(("config file", _code(c["config"])))
    return ["## Training settings", "", "| setting | value |", "| --- | --- |",
            *[f"| {k} | {v.replace('|', '&#124;')} |" for k, v in rows], ""]


def _losses(d: dict) -> list[str]:
    o, a, name = d["outcome"], d["adapter"], d["name"]
    uniform = o.get("uniform_loss") if _num(o.get("uniform_loss")) else d["config"].get("uniform_loss")
    vocab = d["layout"].get("vocab_size")
    finished = o.get("finished")
    final_step = o.get("steps") if finished else None
    rows = [(f"this adapter ({name})", a.get("step"), a.get("valid_loss")),
            ("base model, before training", 0, o.get("base_valid_loss")),
            ("best of the run (best_model)", o.get("best_step"), o.get("best_valid_loss")),
            ("end of the run (final_model)", final_step, o.get("final_valid_loss") if finished else None)]
    lines = ["## Validation loss", "",
             "Teacher-forced cross-entropy on the validation clips, per token, averaged over codebooks (lower is "
             "better).", "", "| | step | validation loss |", "| --- | --- | --- |",
             *[f"| {who} | {_val(step)} | {_loss(loss)} |" for who, step, loss in rows],
             f"| uniform guess{f' ln({vocab})' if vocab else ''} | | {_loss(uniform)} |", ""]
    if name.startswith("checkpoint-") and a.get("valid_loss") is None:
        lines += ["Checkpoints are saved every `--save_steps` steps, between validations: this one's own loss was "
                  "not measured.", ""]
    if not finished:
        lines += [f"The run was at step {_val(o.get('steps'))} of {_val(o.get('total_steps'))} when this card was "
                  f"written: its end is unknown here until the run finishes and the adapter is evaluated.", ""]
    else:
        how = "stopped early: validation stopped improving (`--early_stopping_patience`)" \
            if o.get("stopped_reason") == "early_stopping" else "completed"
        secs = o.get("wall_seconds")
        took = "" if not _num(secs) else f" in {secs:.1f} s" if secs < 120 else f" in {secs / 60:.1f} min"
        lines += [f"The run {how}: {_val(o.get('steps'))} optimizer steps, {_val(o.get('epochs'))} epoch(s){took}.",
                  ""]
    return lines


def _evaluations(d: dict) -> list[str]:
    evals = d["evaluations"]
    run = d.get("run_dir") or "RUN_DIR"
    lines = ["## Evaluation", ""]
    if not evals:
        return lines + ["Not evaluated yet. `evaluate.py` adds its verdicts here, e.g. (from `finetune/lora/`):", "",
                        "```bash", f"python evaluate.py --model_path {_shell(d.get('base_model') or 'BASE')} "
                        f"--lora_model_path {_shell(run)} --compare_multi \\",
                        "  --prompts_file ../data/eval/evaluation_prompts_8.json --output_dir "
                        f"{_shell(os.path.join(run, 'evaluation'))}", "```", ""]
    lines += ["`evaluate.py` generated the same prompts with the same seeds with the base model and this adapter. "
              "Each verdict counts the clips flagged (fade out, noisy, silent, clipping, ...) and gives the held-out "
              "loss on the run's validation clips, FAD to them (relative: compare models within one evaluation) "
              "and loudness. Newest first:", ""]
    for e in evals:
        lines += [f"### {_date(e.get('date'))}: {_code(e.get('folder'))}", ""]
        lines.append(f"- this adapter: {_code(e['verdict']) if e.get('verdict') else 'no verdict recorded'}"
                     + (f" (at strength {e['lora_scale']:g})" if _num(e.get("lora_scale")) and e["lora_scale"] != 1
                        else ""))
        lines += [f"- at strength {s['lora_scale']:g}: held-out loss {_loss(s.get('held_out_loss'))}, FAD "
                  f"{_val(s.get('fad'))}; {_code(s['verdict']) if s.get('verdict') else 'no verdict'}"
                  for s in e.get("strengths") or [] if _num(s.get("lora_scale"))]
        lines += [f"- base model, same prompts: {_code(v)}" for v in e.get("base_verdicts") or [] if v]
        if e.get("also_compared"):
            lines.append(f"- also compared: {', '.join(_code(n) for n in e['also_compared'])}")
        what = f"{_val(e.get('num_prompts'))} prompt(s), {_val(e.get('num_clips'))} clip(s) of " \
               f"{_val(e.get('duration'), ' s')}"
        lines += [f"- {what}; clips and report: {_code(os.path.join(str(e.get('folder')), 'report.html'))}", ""]
    return lines


def _listening(d: dict) -> list[str]:
    tests = d["listening"]
    if not tests:
        return []
    lines = ["## Listening tests", ""]
    for t in tests:
        lines += [f"### {_date(t.get('date'))}: {_code(t.get('source'))}", ""]
        shown = t.get("lines") or []
        lines += [f"- {x}" for x in ([shown] if isinstance(shown, str) else shown)] or ["- (no result recorded)"]
        lines.append("")
    return lines


def _provenance(d: dict) -> list[str]:
    a = d["adapter"]
    return ["## Provenance", "",
            f"- run id: {_code(a['run_id']) if a.get('run_id') else 'unknown'}; run directory: "
            f"{_code(d['run_dir']) if d.get('run_dir') else 'unknown'}",
            f"- adapter: {_code(d['path'])} (step {_val(a.get('step'))}, epoch {_val(a.get('epoch'))}; "
            "training_info.json beside this file)",
            f"- card written {_date(d.get('written'))}, last updated {_date(d.get('updated'))}", ""]


def update_listened_cards(folder: Path, result: dict):
    """evaluate.py --tally: each rated adapter of the evaluation in `folder` that train_lora.py wrote
    gets the tally `result` in its model card (a new tally of the same evaluation replaces the old
    one there). Never raises: the card is a courtesy."""
    from musicgen_lora.evaluation.listening import model_lines  # loaded only to tally

    folder = Path(folder)
    summary = _read_json(folder / "summary.json")

    for name, entry in (summary.get("models") or {}).items():
        adapter = entry.get("adapter_path") if isinstance(entry, dict) else None
        if not adapter or name not in result["models"]:
            continue
        # Recorded as typed: relative to where evaluate.py ran, which may not be here; then the usual
        # layout, RUN/evaluation beside RUN/best_model.
        found = [p for p in (Path(adapter), folder.resolve().parent / Path(adapter).name)
                 if (p / "training_info.json").is_file()]  # without it, not train_lora.py's: no card there
        if not found:
            continue
        adapter = found[0]
        run_id = _read_json(adapter / "training_info.json").get("run_id")
        if entry.get("run_id") and run_id and entry["run_id"] != run_id:  # the same path, another run's adapter
            continue
        if update_card(adapter, listening={"source": os.path.abspath(folder), "lines": model_lines(result, name),
                                           "evaluation_id": result.get("evaluation_id")}):
            log.info(f"{name}: listening result added to the model card {adapter / 'README.md'}")
