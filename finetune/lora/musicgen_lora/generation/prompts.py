"""Prompts and the clips planned from them: reading prompt files, ids and seeds, one job per
(prompt, sample), file names, and how settings are described. No torch here: the command line reads
and checks prompts before any model loads.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from musicgen_lora.core.common import UserError, read_json
from musicgen_lora.core.config import SEED_LIMIT
from musicgen_lora.generation.sampling import GenerationSettings


@dataclass
class Prompt:
    id: str
    text: str
    seed: int | None = None  # None: the run's --seed
    melody: str | None = None  # audio file whose chroma conditions a MusicGen-Melody model; None: no melody
    audio_prompt: str | None = None  # audio file whose first seconds the clip continues; None: text only


def slugify(text: str, max_len: int = 40) -> str:
    """Safe, telling file-name part: lowercase ascii words joined by '-'."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    slug = slug[:max_len].rstrip("-")
    return slug or "prompt"


def melody_path(value, folder: Path | None, where: str) -> str:
    """A melody file as given (a prompts file's entry, relative to that file's folder; --melody,
    relative to the working folder), checked to exist now, before any model loads. Reading it is
    audio.load_audio's, after the model gives the sample rate (a corrupt file is its one line)."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: melody {value!r} is not a file path; use \"melody\": \"tune.wav\"")
    path = Path(value).expanduser()
    if folder is not None and not path.is_absolute():
        path = folder / path
    if not path.is_file():
        raise UserError(f"{where}: melody file {path} not found" + (f" (relative paths start at {folder})"
                                                                      if folder is not None else ""))
    return str(path.resolve())  # sidecars and results name it wherever they are read from


def _prompts_from_list(items, where: str, folder: Path | None = None) -> list[Prompt]:
    prompts, seen = [], set()
    for i, item in enumerate(items):
        melody = None
        if isinstance(item, str):
            text, pid, seed = item, None, None
        elif isinstance(item, dict):
            text = item.get("prompt", item.get("text", item.get("description")))
            pid, seed = item.get("id"), item.get("seed")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)
                                     or not 0 <= seed < SEED_LIMIT):
                raise UserError(f"{where}: entry {i} has seed {seed!r}; use a whole number in [0, 2^63)")
            if item.get("melody") is not None:
                melody = melody_path(item["melody"], folder, f"{where}: entry {i}")
        else:
            raise UserError(f"{where}: entry {i} is {type(item).__name__}; use a string or "
                            f'{{"prompt": "...", "id": "...", "seed": 1, "melody": "tune.wav"}}')
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: entry {i} has no prompt text")
        pid = str(pid) if pid is not None else f"{i:02d}_{slugify(text, 30)}"
        if pid in seen:
            raise UserError(f"{where}: prompt id {pid!r} appears twice; ids must be unique")
        seen.add(pid)
        prompts.append(Prompt(pid, text.strip(), seed, melody))
    return prompts


def load_prompts(prompts_file: str | Path | None = None, prompts: Sequence[str] | None = None,
                 melody: str | None = None) -> list[Prompt]:
    """Prompts from a file and/or the command line, in that order.

    File formats: a JSON list of strings, a JSON list of objects {"prompt": ..., "id": ..., "seed": ...,
    "melody": ...} (id, seed and melody optional; a melody path is relative to the file's folder), a
    JSON object {"prompts": [...]} holding either, or a .txt file with one prompt per line. An empty
    result is an error: there is nothing to generate. melody (--melody): the melody of every prompt
    that has none of its own (a prompt's own melody wins, as its seed wins over --seed).
    """
    out: list[Prompt] = []
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise UserError(f"{path}: prompts file not found; pass a JSON list of prompts "
                            f"(e.g. finetune/data/eval/evaluation_prompts_8.json)")
        if path.suffix.lower() == ".txt":
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the prompts file as UTF-8") from None
            items = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            items = read_json(path, "prompts file")
            if isinstance(items, dict) and "prompts" in items:
                items = items["prompts"]
            if not isinstance(items, list):
                raise UserError(f"{path}: expected a JSON list of prompts (strings or objects with 'prompt')")
        if not items:
            raise UserError(f"{path}: the prompt list is empty; add at least one prompt")
        out += _prompts_from_list(items, str(path), path.parent)
    if prompts:
        start = len(out)
        extra = _prompts_from_list(list(prompts), "--prompts")
        for j, p in enumerate(extra):  # keep ids unique and ordered after the file's
            p.id = f"{start + j:02d}_{slugify(p.text, 30)}"
        out += extra
    if not out:
        raise UserError("no prompts: pass --prompts \"...\" or a prompts file with at least one prompt")
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise UserError("prompt ids are not unique across the prompts file and --prompts")
    if melody is not None:
        melody = melody_path(melody, None, "--melody")
        for p in out:
            p.melody = p.melody or melody
    return out


def check_melody_model(prompts: list[Prompt], melody_model: bool, model_path: str, flag: str,
                       melody_flag: str | None = None, prompts_file=None):
    """A melody needs a MusicGen-Melody checkpoint: on a text-only MusicGen it would be dropped without
    a word, so it is one line naming where the melody came from (--melody, else the prompts file)."""
    given = [p for p in prompts if p.melody]
    if melody_model or not given:
        return
    fix = f"pass {flag} a MusicGen-Melody checkpoint (e.g. facebook/musicgen-melody)"
    if melody_flag:
        raise UserError(f"--melody {melody_flag}: {model_path} is a text-only MusicGen, which takes no melody; "
                        f"{fix}, or drop --melody")
    raise UserError(f"{prompts_file}: prompt {given[0].id!r} has a melody, but {model_path} is a text-only MusicGen, "
                    f"which takes no melody; {fix}, or remove the \"melody\" entries")


def clip_filename(prompt: Prompt, sample: int | None = None) -> str:
    """A clip's file stem: its prompt's id (so report headings and files agree), made safe for any
    file system, plus _sN when a prompt has several samples."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", prompt.id).strip("-.")[:60] or "prompt"
    return f"{stem}_s{sample}" if sample is not None else stem


@dataclass
class Job:
    """One clip to generate: prompt index, sample number and its seed."""

    prompt_index: int
    prompt: Prompt
    sample: int
    seed: int
    extra: dict = field(default_factory=dict)


def plan_jobs(prompts: list[Prompt], num_samples: int, seed: int) -> list[Job]:
    """(prompt, sample) pairs with their seeds: the prompt's own seed (or --seed) plus the sample number."""
    if num_samples < 1:
        raise UserError("--num_samples must be at least 1")
    jobs = []
    for i, p in enumerate(prompts):
        base_seed = p.seed if p.seed is not None else seed
        if base_seed + num_samples - 1 >= SEED_LIMIT:  # before the model loads, not inside sampling
            raise UserError(f"prompt {p.id!r}: seed {base_seed} + sample {num_samples - 1} reaches 2^63, past what "
                            f"the generators take; use a smaller seed")
        for j in range(num_samples):
            jobs.append(Job(i, p, j, base_seed + j))
    return jobs


def describe_settings(how: GenerationSettings) -> str:
    s = how.sampling
    mode = "greedy" if s.greedy else f"temperature {s.temperature:g}, top_k {s.top_k}, top_p {s.top_p:g}"
    return f"{how.duration:g} s, guidance {s.guidance_scale:g}, {mode}, batch {how.batch_size}"


def describe_windows(windows: list[list[float]]) -> str:
    """'60 s in 3 windows (0-30, 30-48, 48-60 s), each continuing the end of the one before'."""
    spans = ", ".join(f"{a:g}-{b:g}" for a, b in windows)
    return (f"{windows[-1][1]:g} s in {len(windows)} windows ({spans} s), each continuing the end of the one "
            f"before (--window_seconds, --window_overlap)")


def describe_melodies(prompts: list[Prompt], melody_model: bool) -> str | None:
    """Which prompts a MusicGen-Melody model hears with a melody (the others get the null one); None
    for a text-only model."""
    if not melody_model:
        return None
    files = list(dict.fromkeys(p.melody for p in prompts if p.melody))
    if not files:
        return ("note: a MusicGen-Melody model without a melody (the null melody, as generate() uses); pass "
                "--melody FILE, or \"melody\" entries in the prompts file, to condition on one")
    shown = ", ".join(Path(f).name for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    n = sum(1 for p in prompts if p.melody)
    return f"melody: {n} of {len(prompts)} prompt(s) follow {shown}" + (
        "; the others get the null melody" if n < len(prompts) else "")
