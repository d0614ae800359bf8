"""Scoring clips into results: per-clip metrics and flags, per-model aggregates and the verdict line,
loudness plots, and the files an evaluation leaves (comparison_results.jsonl, summary.json,
report.html). Used after generating (compare.compare_models) and on any folder of audio
(--score_only, score_folder).
"""
from __future__ import annotations

import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from musicgen_lora.audio.reader import MUSICGEN_SAMPLE_RATE, load_audio
from musicgen_lora.core.common import UserError, log, parse_json
from musicgen_lora.core.outputs import atomic_dir, atomic_write_json, atomic_write_text, write_manifest
from musicgen_lora.evaluation.adherence import adherence, adherence_words, asked, model_adherence
from musicgen_lora.evaluation.config import TOOL
from musicgen_lora.evaluation.figures import loudness_plot_png, spectrogram_png
from musicgen_lora.evaluation.flags import count_words, model_flag_clips, model_flag_counts
from musicgen_lora.evaluation.listening import PAGE, is_blind_copy, write_listening
from musicgen_lora.evaluation.metrics import MELODY_DROP, THRESHOLDS, ignores_melody, score_clip, to_mid
from musicgen_lora.evaluation.report import write_report
from musicgen_lora.generation.prompts import slugify

BASE = "base_model"  # the model folder adapters are measured against (ignores_melody)


def flag_melody(rows: list[dict], base: str = BASE):
    """ignores_melody on each adapter clip with a chroma_cosine whose base-model twin (same prompt,
    sample and seed) has one too; the flag is absent elsewhere (flags.py: melody flags)."""
    def key(r):
        return clip_key(r) + (r.get("seed"),)

    base_cos = {key(r): r["metrics"]["chroma_cosine"] for r in rows
                if r["model"] == base and "chroma_cosine" in r.get("metrics", {})}
    for r in rows:
        if r["model"] != base and "chroma_cosine" in r.get("metrics", {}) and key(r) in base_cos:
            r["flags"]["ignores_melody"] = ignores_melody(r["metrics"]["chroma_cosine"], base_cos[key(r)])


# A window's audio is scored on its own only when it is long enough for the measures (3 s: the
# short-term loudness window); a shorter last window is scored together with the one before it.
MIN_SCORED_WINDOW_S = 3.0


def scored_spans(windows) -> list[list[float]]:
    """The [start_s, end_s] spans a long clip is scored in: its windows' new audio, a short one merged
    into the span before it. [] for a clip of one window (the whole-clip score says it all)."""
    spans: list[list[float]] = []
    for a, b in windows or []:
        if spans and b - a < MIN_SCORED_WINDOW_S:
            spans[-1][1] = b
        else:
            spans.append([float(a), float(b)])
    return spans if len(spans) > 1 else []


def score_windows(row: dict, wav, sr: int):
    """A clip generated in windows (row["windows"]) gets each span scored on its own (row["window_scores"]),
    and a fault flag raised in any span is raised for the clip, with the spans that raised it in
    row["flag_windows"]: a loop or a fade that starts in the third window of a 60 s clip is diluted in
    the whole-clip numbers, but plain in its window's."""
    spans = scored_spans(row.get("windows"))
    if not spans:
        return
    row["window_scores"], raised = [], {}
    for i, (a, b) in enumerate(spans):
        scored = score_clip(wav[int(round(a * sr)):int(round(b * sr))], sr)
        flags = {k: v for k, v in scored["flags"].items() if v}
        row["window_scores"].append({"start_s": a, "end_s": b, "flags": flags,
                                     "integrated_lufs": scored["metrics"]["integrated_lufs"]})
        for name in flags:
            raised.setdefault(name, []).append(i)
            if name in scored["onsets"]:  # the window's onset in the clip's time; the earliest wins
                at = a + scored["onsets"][name]
                onsets = row.setdefault("flag_onsets", {})
                onsets[name] = min(onsets.get(name, at), at)
    for name in raised:
        row["flags"][name] = True
    row["flag_windows"] = raised


def score_rows(out: Path, rows: list[dict], audio: list, sr: int, summary: dict, extras: dict[str, dict],
               notes: list[str], clap=None, melodies: dict | None = None):
    """Per-clip metrics into rows, per-model aggregates and verdicts into summary, loudness plots.
    audio: one array per row, (samples,) or (samples, channels), or None for an unreadable file.
    melodies: {row["melody"]: (samples,) reference melody at sr}: rows with one get its chroma_cosine
    (and adapters the ignores_melody flag against the base model)."""
    curves: dict[tuple, dict[str, list[float]]] = {}
    for row, wav in zip(rows, audio):
        if wav is None:
            continue
        scored = score_clip(wav, sr)
        row["metrics"], row["flags"] = scored["metrics"], scored["flags"]
        if scored["onsets"]:  # {flag: seconds} where each raised fault starts: "noisy from 9.0 s"
            row["flag_onsets"] = dict(scored["onsets"])
        if asked(row.get("prompt")):  # a prompt naming a tempo or key: did the clip follow it?
            row["metrics"].update(adherence(to_mid(wav), sr, row["prompt"]))
        score_windows(row, wav, sr)
        if row.get("flag_onsets") and row.get("spectrogram"):  # drawn before scoring: again, with the onsets marked
            spectrogram_png(to_mid(wav), sr, out / row["spectrogram"], **time_marks(row), onsets=row["flag_onsets"])
        if row.get("melody") in (melodies or {}):
            from musicgen_lora.audio.chroma import chroma_cosine  # torch: only when there is a melody to compare with

            row["metrics"]["chroma_cosine"] = chroma_cosine(wav, melodies[row["melody"]], sr)
        row["channels"] = scored["metrics"]["channels"]
        row["loudness_trajectory"] = scored["loudness_trajectory"]
        curves.setdefault(clip_key(row), {})[row["model"]] = scored["loudness_trajectory"]
    if clap is not None:
        scored_rows = [(r, a) for r, a in zip(rows, audio) if a is not None and r.get("prompt")]
        sims = clap.similarity([r["prompt"] for r, _ in scored_rows], [to_mid(a) for _, a in scored_rows], sr)
        for (r, _), sim in zip(scored_rows, sims):
            r["metrics"]["clap_similarity"] = sim
    plots = {}
    for (pid, sample), per_model in curves.items():
        rel = f"plots/{slugify(pid, 60)}{f'_s{sample}' if sample else ''}_loudness.png"
        first = next(r for r in rows if clip_key(r) == (pid, sample))
        loudness_plot_png(per_model, out / rel, title=f"{pid}: short-term loudness", **time_marks(first))
        plots[f"{pid}#{sample}"] = rel
    summary["loudness_plots"] = plots
    flag_melody(rows)
    models = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name and "metrics" in r]
        n = len(mine)
        counts = model_flag_counts([r["flags"] for r in mine])
        entry = {"num_clips": n, "flag_counts": counts}
        onsets = {}
        for r in mine:
            for flag, at in (r.get("flag_onsets") or {}).items():
                onsets.setdefault(flag, []).append(at)
        if onsets:  # {flag: sorted onsets of the clips raising it}, for the verdict's "from 9.0 s"
            entry["flag_onsets_s"] = {k: sorted(v) for k, v in onsets.items()}
        if model_flag_clips([r["flags"] for r in mine]):
            entry["flag_clips"] = model_flag_clips([r["flags"] for r in mine])
        channels = sorted({r["channels"] for r in mine})
        if channels:  # 1 mono, 2 stereo; [1, 2] for a folder of both
            entry["channels"] = channels[0] if len(channels) == 1 else channels
        entry.update(model_adherence([r["metrics"] for r in mine]))  # tempo_asked, tempo_right, key_exact, ...
        entry.update({"held_out_loss": None, "fad": None})
        entry.update(extras.get(name, {}))
        for key in ("integrated_lufs", "loudness_slope_db_per_s", "loudness_drop_db", "silence_ratio",
                    "longest_silence_s", "spectral_flatness", "clipping_ratio", "clap_similarity",
                    "chroma_cosine",  # over the clips with a reference melody only
                    "lr_correlation", "side_mid_db"):  # the stereo two: over the stereo clips only
            vals = [r["metrics"][key] for r in mine if r["metrics"].get(key) is not None]
            if vals:
                entry[key] = float(np.mean(vals))
        entry["verdict"] = verdict(name, entry)
        models[name] = entry
    summary["models"] = models
    summary["thresholds"] = THRESHOLDS
    summary["notes"] = notes + [
        "FAD (EnCodec): Frechet distance between the model's own EnCodec encoder frames of generated and "
        "validation clips; relative (compare models in one evaluation), noisy with few clips."]
    if any(r.get("channels", 1) > 1 for r in rows):
        summary["notes"].append(
            "Stereo clips: loudness, fade, silence and flatness are measured on the mid signal (L + R) / 2, "
            "peaks and clipping on every channel; L/R correlation and side/mid energy show the stereo image "
            "(collapsed_to_mono: the same signal in both channels; phase_inverted: one channel's polarity flipped).")
    if any("chroma_cosine" in (r.get("metrics") or {}) for r in rows):
        summary["notes"].append(
            "Melody: chroma_cosine is each clip's chroma cosine similarity to its reference melody over the frames "
            "both cover (1.0 the same pitch classes, ~0 a tritone away, ~0.4 noise); ignores_melody: an adapter's clip "
            f"scores more than {MELODY_DROP:g} below the base model's clip of the same prompt and seed.")
    unreadable = [r for r in rows if r.get("error")]
    if unreadable:
        summary["unreadable"] = [{"wav": r["wav"], "error": r["error"]} for r in unreadable]


def time_marks(row: dict) -> dict:
    """The plots' marks for a row: where its windows start, and where an audio prompt ends."""
    return {"boundaries": [a for a, _ in (row.get("windows") or [])[1:]],
            "prompt_end": row.get("prompt_seconds") if row.get("audio_prompt") else None}


def verdict(name: str, m: dict) -> str:
    """One line a person can act on, e.g. 'final_model: 6/8 fade out, 0/8 noisy; held-out loss 3.91'."""
    line = f"{name}: " + ", ".join(count_words(m["flag_counts"], m["num_clips"], totals=m.get("flag_clips"),
                                               onsets=m.get("flag_onsets_s")))
    tail = []
    if m.get("held_out_loss") is not None:
        ref = f" (uniform {m['uniform_loss']:.2f})" if m.get("uniform_loss") is not None else ""
        tail.append(f"held-out loss {m['held_out_loss']:.4f}{ref}")
    if m.get("fad") is not None:
        tail.append(f"FAD {m['fad']:.4g}")  # scale depends on the codec
    if m.get("clap_similarity") is not None:
        tail.append(f"CLAP {m['clap_similarity']:.3f}")
    if m.get("chroma_cosine") is not None:
        tail.append(f"chroma cosine {m['chroma_cosine']:.3f}")
    tail += adherence_words(m)
    if m.get("integrated_lufs") is not None:
        tail.append(f"{m['integrated_lufs']:.1f} LUFS")
    return line + ("; " + ", ".join(tail) if tail else "")


AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


def read_clip(path: Path, sample_rate: int) -> np.ndarray:
    """A file at sample_rate as score_clip takes it: (samples,) mono, (samples, channels) otherwise
    (audio.load_audio keeps the file's channels; an unreadable file is its one-line error)."""
    wav = load_audio(path, sample_rate, channels=None)  # (channels, samples)
    return wav[0] if wav.shape[0] == 1 else np.ascontiguousarray(wav.T)


def read_sidecar(path: Path) -> dict:
    """A clip's .json sidecar ({} when absent or unreadable)."""
    try:
        side = parse_json(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return side if isinstance(side, dict) else {}


def sidecar_melody(path: Path, side: dict) -> Path | None:
    """The reference melody a clip's sidecar names: evaluate.py's copy (melody_copy, relative to the
    sidecar: found even when the folder moved), else the source file; None if neither is there."""
    for value, folder in ((side.get("melody_copy"), path.parent), (side.get("melody"), None)):
        if isinstance(value, str) and value:
            candidate = folder / value if folder is not None else Path(value)
            if candidate.is_file():
                return candidate
    return None


def sidecar_file(path: Path, value) -> Path | None:
    """A file a sidecar names relative to itself (evaluate.py's copies), if it is there."""
    if isinstance(value, str) and value and (path.parent / value).is_file():
        return path.parent / value
    return None


def read_melody(path: Path, sample_rate: int) -> np.ndarray | None:
    """A reference melody as generation read it (mono mix at the rate); None, with a warning, if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_audio(path, sample_rate, channels=1, fix="chroma_cosine is skipped for its clips")
    except UserError as e:
        log.warning(f"warning: reference melody unreadable: {e}")
        return None


def score_folder(input_dir: Path, out: Path, sample_rate: int = MUSICGEN_SAMPLE_RATE) -> dict:
    """--score_only: score every audio file under input_dir (recursively) into out. The first folder
    level names the model (base_model/, best_model/, ...); a sidecar .json supplies prompt and seed.
    Unreadable files are reported and skipped. A clip whose sidecar names a melody that is there gets
    its chroma_cosine; the melody files themselves (evaluate.py's melodies/) are references, not clips,
    as are the real continuations (references/). A sidecar's windows are scored one by one."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise UserError(f"{input_dir}: folder not found; pass --input_dir a folder of WAVs (e.g. an old evaluation)")
    if out.resolve() == input_dir.resolve():
        raise UserError(f"{out}: --output_dir is --input_dir; the scores need a folder of their own, e.g. "
                        f"--output_dir {input_dir.name}_scored")
    root = input_dir.resolve()
    files = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                   and not p.name.startswith(".") and out.resolve() not in p.resolve().parents
                   and not is_blind_copy(p))  # an old evaluation's listen/ holds its clips a second time
    outside = [p for p in files if root not in p.resolve().parents]  # symlinks out of the tree: not followed
    if outside:
        log.warning(f"warning: skipping {len(outside)} link(s) that point outside {input_dir} (e.g. {outside[0]})")
        files = [p for p in files if p not in outside]
    sidecars = {p: read_sidecar(p) for p in files}
    references = {m.resolve() for p, side in sidecars.items()  # melodies and real continuations are not clips
                  for m in (sidecar_melody(p, side), sidecar_file(p, side.get("reference_copy"))) if m is not None}
    files = [p for p in files if p.resolve() not in references]
    if not files:
        raise UserError(f"{input_dir}: no audio files (.wav/.flac/.mp3/.ogg) found")
    rows, audio, melodies = [], [], {}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with atomic_dir(out, owner=TOOL) as tmp:
        for path in files:
            rel_in = path.relative_to(input_dir)
            model = rel_in.parts[0] if len(rel_in.parts) > 1 else "clips"
            side = sidecars[path]
            row = {"prompt_id": side.get("prompt_id") or path.stem, "prompt": side.get("prompt"), "model": model,
                   "adapter_path": side.get("adapter"), "mix": side.get("mix"), "run_id": side.get("run_id"),
                   "wav": os.path.relpath(path.resolve(), out.resolve()),
                   "seed": side.get("seed"), "sample": side.get("sample", 0) or 0,
                   "settings": {k: side[k] for k in ("duration", "guidance_scale", "temperature", "top_k", "top_p",
                                                      "greedy", "batch_size") if k in side}}
            if isinstance(side.get("windows"), list) and side["windows"]:  # a long clip: scored per window too
                row["windows"] = side["windows"]
            if side.get("audio_prompt"):  # a continuation: what it continued, and the real music after it
                row.update({"audio_prompt": side["audio_prompt"], "prompt_seconds": side.get("prompt_seconds")})
                real = sidecar_file(path, side.get("reference_copy"))
                if real is not None:
                    row["reference_audio"] = os.path.relpath(real.resolve(), out.resolve())
            melody = sidecar_melody(path, side)
            if melody is not None:
                row["melody"] = os.path.relpath(melody.resolve(), out.resolve())
                row["melody_source"] = side.get("melody")
                if row["melody"] not in melodies:
                    melodies[row["melody"]] = read_melody(melody, sample_rate)
            try:
                with warnings.catch_warnings():  # librosa's fallback decoders warn before failing
                    warnings.simplefilter("ignore")
                    wav = read_clip(path, sample_rate)
            except UserError as e:
                log.warning(f"warning: skipping unreadable file: {e}")
                row["error"] = str(e)
                rows.append(row)
                audio.append(None)
                continue
            spec_rel = Path(model) / (str(rel_in.with_suffix("")).replace(os.sep, "__") + ".png")
            spectrogram_png(to_mid(wav), sample_rate, tmp / spec_rel, **time_marks(row))
            row.update({"spectrogram": spec_rel.as_posix(), "sample_rate": sample_rate,
                        "duration_s": len(wav) / sample_rate})
            rows.append(row)
            audio.append(wav)
        summary = {"created": created, "title": f"Scores for {input_dir}", "input_dir": str(input_dir),
                   "settings": {}, "score_only": True}
        # Which adapter (and training run) made each model's clips, from their sidecars: credited to that run.
        extras = {}
        for row in rows:
            extras.setdefault(row["model"], {"adapter_path": row.get("adapter_path"), "mix": row.get("mix"),
                                             "run_id": row.get("run_id")})
        score_rows(tmp, rows, audio, sample_rate, summary, extras, ["--score_only: no models loaded, so no "
                                                                    "held-out loss or FAD."],
                   melodies={k: v for k, v in melodies.items() if v is not None})
        write_results(tmp, rows, summary)
        write_manifest(tmp, TOOL, os.listdir(tmp))
    return summary


def write_results(out: Path, rows: list[dict], summary: dict):
    """comparison_results.jsonl, summary.json, report.html and the blind listening test (listen.html,
    listen/, listening_key.json; evaluation/listening.py) (used by compare and --score_only)."""
    if write_listening(out, rows, summary) is not None:
        summary["listen_page"] = PAGE  # report.html links it
    atomic_write_text(out / "comparison_results.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False, default=to_jsonable) + "\n" for r in rows))
    atomic_write_json(out / "summary.json", summary)
    write_report(out, rows, summary)


def clip_key(row) -> tuple:
    return row["prompt_id"], row.get("sample", 0)


def to_jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
