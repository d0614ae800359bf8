"""report.html: a self-contained listening page (no network, works from file://).

Grouped by prompt, one row per model: audio player, spectrogram, settings and the clip's metrics
with its flags highlighted (stereo clips also their L/R correlation and side/mid energy). A prompt
generated with a melody starts with a row playing that reference melody (the copy in melodies/),
and its clips show their chroma cosine to it. Above, the
clips' format ("stereo, 2 channels, 32 kHz") and a per-model table of the summary numbers. Every link is relative
to the report, so the output folder can be moved or zipped whole.
"""
from __future__ import annotations

import html
import math
from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote

from musicgen_lora.core.outputs import atomic_write_text
from musicgen_lora.evaluation.flags import FLAG_NAMES, NOTE_FLAG_NAMES

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1200px;
  color:#1d1d1f;padding:0 1em}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.1em;margin:1.6em 0 .3em}
.meta{color:#555;font-size:.9em} .prompt{font-style:italic}
table{border-collapse:collapse;width:100%;margin:.4em 0}
th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:middle;font-size:.88em}
th{background:#f4f4f6}
td.model{font-weight:600;white-space:nowrap} td.verdict{min-width:16em}
audio{width:260px} img.spec{height:110px;display:block} img.loud{max-width:100%;height:180px}
.flag{display:inline-block;background:#d93025;color:#fff;border-radius:3px;padding:0 .4em;margin:.1em;font-size:.8em}
.flag.note{background:#b06000} .windows{font-size:.85em}
tr.melody td{background:#f4f8ff}
.ok{color:#188038} td.bad{background:#fde7e6;color:#a50e0e;font-weight:600}
td.warn{background:#fef7e0;color:#b06000;font-weight:600}
.small{font-size:.8em;color:#555} code{font-size:.9em}
.scroll{overflow-x:auto;max-width:100%} td.best{font-weight:700}
"""



def _url(rel: str) -> str:
    return quote(rel.replace("\\", "/"))


def _fmt(v, digits=2) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "&ndash;"
        if isinstance(digits, str):  # a format spec, for numbers whose scale varies (FAD)
            text = f"{v:{digits}}"
        else:
            text = f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"
        # -0.04 rounds to "-0.0": a sign on a printed zero only confuses
        return text[1:] if text.startswith("-") and not any(c in "123456789" for c in text.split("e")[0]) else text
    return html.escape(str(v))


def _flags_html(flags: dict | None, onsets: dict | None = None) -> str:
    """The raised flags as badges; onsets ({flag: seconds}) adds where each starts ("noisy from 9.0 s")."""
    if not flags:
        return ""
    raised = [name for name in FLAG_NAMES if flags.get(name)]
    if not raised:
        return '<span class="ok">no flags</span>'
    onsets = onsets or {}
    return "".join(f'<span class="flag{" note" if n in NOTE_FLAG_NAMES else ""}">{html.escape(n)}'
                   f'{f" from {onsets[n]:.1f} s" if isinstance(onsets.get(n), (int, float)) else ""}</span>'
                   for n in raised)


# Per-clip numbers shown beside each player: (key in row["metrics"], label, digits).
CLIP_METRICS = (("integrated_lufs", "LUFS", 1), ("loudness_drop_db", "drop dB", 1),
                ("loudness_slope_db_per_s", "slope dB/s", 2), ("silence_ratio", "silence", 2),
                ("spectral_flatness", "flatness", 3), ("clipping_ratio", "clipping", 4),
                ("clap_similarity", "CLAP", 3), ("chroma_cosine", "chroma cos", 3))
# ... and of a stereo clip, after the words "stereo (2 ch)".
STEREO_METRICS = (("lr_correlation", "L/R corr", 3), ("side_mid_db", "side/mid dB", 1))

# Per-model summary columns: (key, label, digits, better) -- better: "lower" or "higher" when one
# direction is better (the best model of the column is marked), None for a description.
MODEL_COLUMNS = (
    ("num_clips", "clips", 0, None),
    ("channels", "channels", 0, None),  # 1 mono, 2 stereo
    ("adapter_step", "step", 0, None),
    ("held_out_loss", "held-out loss", 4, "lower"),
    ("fad", "FAD (EnCodec)", ".4g", "lower"),  # its scale depends on the codec: significant digits
    ("integrated_lufs", "mean LUFS", 1, None),
    ("loudness_drop_db", "mean drop dB", 1, "lower"),
    ("silence_ratio", "mean silence", 2, "lower"),
    ("spectral_flatness", "mean flatness", 3, None),
    ("clipping_ratio", "mean clipping", 4, "lower"),
    ("clap_similarity", "CLAP", 3, "higher"),
    ("chroma_cosine", "chroma cosine", 3, "higher"),  # clips with a reference melody only
    ("tempo_as_asked", "tempo as asked", 2, "higher"),  # share of the clips whose prompt names a tempo
    ("key_as_asked", "key as asked", 2, "higher"),  # ... a key (evaluation/adherence.py)
    ("lr_correlation", "mean L/R corr", 3, None),  # stereo models only
    ("side_mid_db", "mean side/mid dB", 1, None),
)
ARROWS = {"lower": " &darr;", "higher": " &uarr;"}


def channel_words(channels: int, sample_rate=None) -> str:
    """'stereo, 2 channels, 32 kHz' / 'mono, 1 channel'."""
    kind = {1: "mono", 2: "stereo"}.get(channels, "multichannel")
    words = f"{kind}, {channels} channel{'' if channels == 1 else 's'}"
    return words + (f", {sample_rate / 1000:g} kHz" if isinstance(sample_rate, (int, float)) else "")


def _format_line(rows: list[dict]) -> str:
    """The clips' format for the header: 'stereo, 2 channels, 32 kHz' (each kind when they differ)."""
    kinds = dict.fromkeys((r["channels"], r.get("sample_rate")) for r in rows if isinstance(r.get("channels"), int))
    return "; ".join(channel_words(c, sr) for c, sr in sorted(kinds, key=lambda k: (k[0], k[1] or 0)))


def _best(models: dict, key: str, better: str | None) -> set:
    """Names of the models with the best value of a column (ties all marked); none when only one
    model has a number, or all are equal."""
    values = {n: m.get(key) for n, m in models.items()
              if isinstance(m.get(key), (int, float)) and not isinstance(m.get(key), bool)
              and math.isfinite(m.get(key))}
    if better is None or len(values) < 2 or len(set(values.values())) == 1:
        return set()
    top = (min if better == "lower" else max)(values.values())
    return {n for n, v in values.items() if v == top}


def _same_steps(models: dict) -> list[str]:
    """'best_model and final_model are the same step (12)': two adapters of one run saved at one step
    are one adapter; their numbers differ only by sampling."""
    by_step = {}
    for name, m in models.items():
        if isinstance(m.get("adapter_step"), int) and m.get("run_id"):  # at one strength (--lora_scales)
            by_step.setdefault((m["run_id"], m["adapter_step"], m.get("lora_scale")), []).append(name)
    return [f"{' and '.join(names)} are the same step ({step}) of one run: the same weights, so their numbers "
            f"differ only by chance" for (_, step, _), names in by_step.items() if len(names) > 1]


def _model_table(summary: dict) -> str:
    """Two tables, each scrolling on its own when the page is narrow: the models' numbers (an arrow
    says which way is better, the best of each column is bold), then their flags (clips flagged /
    clips)."""
    models = summary.get("models") or {}
    if not models:
        return ""
    present = [c for c in MODEL_COLUMNS if any(m.get(c[0]) is not None for m in models.values())]
    flag_cols = [f for f in FLAG_NAMES if any(f in (m.get("flag_counts") or {}) for m in models.values())]
    best = {c[0]: _best(models, c[0], c[3]) for c in present}
    head = "<th>verdict</th>" + "".join(f"<th>{html.escape(c[1])}{ARROWS.get(c[3], '')}</th>" for c in present)
    body, flag_body = [], []
    for name, m in models.items():
        raised = [f for f, n in (m.get("flag_counts") or {}).items() if isinstance(n, int) and n > 0]
        # A fault (fade, noise, ...) marks the verdict red; only notes (collapsed to mono) amber.
        mark = " bad" if any(f not in NOTE_FLAG_NAMES for f in raised) else " warn" if raised else ""
        verdict = str(m.get("verdict", "")).split(": ", 1)[-1] if m.get("verdict") else ""
        cells = [f'<td class="model">{html.escape(name)}</td>',
                 f'<td class="verdict{mark}">{html.escape(verdict)}</td>']
        for key, _label, digits, _better in present:
            value = _fmt(m.get(key), digits)
            cells.append(f'<td class="best">{value} (best)</td>' if name in best[key] else f"<td>{value}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
        flags = [f'<td class="model">{html.escape(name)}</td>']
        for f in flag_cols:
            n = (m.get("flag_counts") or {}).get(f, 0)
            cls = (' class="warn"' if f in NOTE_FLAG_NAMES else ' class="bad"') if n else ""
            of = (m.get("flag_clips") or {}).get(f, m.get("num_clips", "?"))  # a melody flag: of the clips with one
            flags.append(f"<td{cls}>{n}/{of}</td>")
        flag_body.append("<tr>" + "".join(flags) + "</tr>")
    notes = "".join(f'<p class="small">{html.escape(n)}</p>' for n in [*_same_steps(models), *summary.get("notes", [])])
    flag_table = ""
    if flag_cols:
        flag_head = "".join(f"<th>{html.escape(f)}</th>" for f in flag_cols)
        flag_table = (f'<div class="scroll"><table id="flags"><tr><th>flags: clips flagged / clips</th>{flag_head}'
                      f'</tr>{"".join(flag_body)}</table></div>')
    return (f'<h2>Models</h2><p class="small">&darr; lower is better, &uarr; higher is better; the best of each '
            f'column is bold.</p><div class="scroll"><table id="models"><tr><th>model</th>{head}</tr>'
            f'{"".join(body)}</table></div>{flag_table}{notes}')


def _listen_link(summary: dict) -> str:
    """The blind listening test (listen.html, evaluation/listening.py): best heard before this page names the models."""
    page = summary.get("listen_page")
    if not page:
        return ""
    return (f'<p class="meta" id="listen-link"><a href="{_url(page)}">Blind listening test</a>: the same clips under '
            f'letters, names hidden until the end; open it before reading on, this page names the models.</p>')


def _run_links(summary: dict) -> str:
    """Links to each evaluated training run's curves and review (paths relative to the report)."""
    items = []
    for run in summary.get("training_runs") or []:
        links = [f'<a href="{_url(run[key])}">{label}</a>' for key, label in (("curves", "training curves"),
                                                                              ("review", "review of the logs"))
                 if run.get(key)]
        if links:
            name = html.escape(str(run.get("name", "")))
            items.append(f"<li>run <code>{name}</code>: {' &middot; '.join(links)}</li>")
    return f'<ul class="meta" id="runs">{"".join(items)}</ul>' if items else ""


def _clip_cell(row: dict) -> str:
    metrics = row.get("metrics") or {}
    parts = [f"{label} {_fmt(metrics.get(key), digits)}" for key, label, digits in CLIP_METRICS if key in metrics]
    s = row.get("settings") or {}
    setting = ", ".join(f"{k} {v}" for k, v in s.items() if k in ("guidance_scale", "temperature", "top_k", "top_p"))
    seed = f"seed {row['seed']}" if row.get("seed") is not None else ""
    lines = [_flags_html(row.get("flags"), row.get("flag_onsets"))] if row.get("flags") is not None else []
    if row.get("error"):
        lines.append(f'<span class="flag">unreadable</span> {html.escape(row["error"])}')
    if parts:
        lines.append(" &middot; ".join(parts))
    channels = row.get("channels", metrics.get("channels"))
    if isinstance(channels, int) and channels > 1:
        lines.append(" &middot; ".join([f"{'stereo' if channels == 2 else 'multichannel'} ({channels} ch)"] +
                                       [f"{label} {_fmt(metrics.get(key), digits)}"
                                        for key, label, digits in STEREO_METRICS if key in metrics]))
    asked = [f"asked {metrics['asked_bpm']:g} bpm: {_fmt(metrics.get('bpm'), 1)} ({metrics.get('tempo_match')})"
             if "asked_bpm" in metrics else "",
             f"asked {metrics['asked_key']}: {metrics.get('key')} ({metrics.get('key_match')})"
             if "asked_key" in metrics else ""]  # evaluation/adherence.py
    if any(asked):
        lines.append(html.escape(" · ".join(a for a in asked if a)))
    if row.get("window_scores"):
        lines.append(_windows_html(row))
    lines.append(f'<span class="small">{html.escape(", ".join(x for x in (seed, setting) if x))}</span>')
    return "<br>".join(line for line in lines if line)


def _windows_html(row: dict) -> str:
    """A long clip's windows, each with the flags its own audio raised: 'windows: 0-30 s ok · 30-48 s
    repetitive · 48-60 s ok' (the plots mark the same times with dashed lines)."""
    parts = []
    for w in row["window_scores"]:
        flags = "".join(f'<span class="flag{" note" if n in NOTE_FLAG_NAMES else ""}">{html.escape(n)}</span>'
                        for n in FLAG_NAMES if (w.get("flags") or {}).get(n))
        parts.append(f'{w["start_s"]:g}-{w["end_s"]:g} s ' + (flags or '<span class="ok">ok</span>'))
    return '<span class="windows">windows: ' + " &middot; ".join(parts) + "</span>"


def _melody_rows(group: list[dict]) -> list[str]:
    """The reference melody row(s) of a prompt group: what its clips were asked to follow, played beside them."""
    out = []
    for rel in dict.fromkeys(r["melody"] for r in group if r.get("melody")):
        source = next((r.get("melody_source") for r in group if r.get("melody") == rel and r.get("melody_source")),
                      None)
        where = f"from <code>{html.escape(str(source))}</code>" if source else ""
        out.append(f'<tr class="melody"><td class="model">reference melody</td><td><audio controls preload="metadata" '
                   f'src="{_url(rel)}"></audio><div class="small">{html.escape(rel)}</div></td><td></td>'
                   f'<td class="small">the melody the clips below were generated with {where}</td></tr>')
    return out


def _reference_rows(group: list[dict]) -> list[str]:
    """An audio-prompted group's real continuation: the held-out clip the models were given the start of."""
    out = []
    for rel in dict.fromkeys(r["reference_audio"] for r in group if r.get("reference_audio")):
        r = next(r for r in group if r.get("reference_audio") == rel)
        source = html.escape(Path(str(r.get("audio_prompt", ""))).name)
        out.append(f'<tr class="melody reference"><td class="model">real continuation</td><td><audio controls '
                   f'preload="metadata" src="{_url(rel)}"></audio><div class="small">{html.escape(rel)}</div></td>'
                   f'<td></td><td class="small">the held-out clip <code>{source}</code>: every model below was given '
                   f'its first {_fmt(r.get("prompt_seconds"), 1)} s (dotted line) and continued it</td></tr>')
    return out


def is_base_entry(model: dict) -> bool:
    """A summary.json "models" entry (or a results row) of the base model: neither an adapter nor a mix."""
    return not model.get("adapter_path") and not model.get("mix")


def _strength_table(summary: dict) -> str:
    """evaluate.py --lora_scales: each adapter's held-out loss and FAD against its strength, the base
    model as strength 0 (the same prompts, seeds and validation clips), when one adapter ran at two
    strengths or more."""
    models = summary.get("models") or {}
    by_adapter: OrderedDict[str, list] = OrderedDict()
    for name, m in models.items():
        if m.get("adapter_path") and isinstance(m.get("lora_scale"), (int, float)):
            by_adapter.setdefault(m["adapter_path"], []).append((float(m["lora_scale"]), name, m))
    sweeps = {a: sorted(runs, key=lambda r: r[0]) for a, runs in by_adapter.items() if len(runs) > 1}
    if not sweeps:
        return ""
    base = next((m for m in models.values() if is_base_entry(m)), None)
    body = []
    for runs in sweeps.values():
        for strength, name, m in ([(0.0, "base model", base)] if base else []) + runs:
            flagged = sum(n for n in (m.get("flag_counts") or {}).values() if isinstance(n, int))
            body.append(f'<tr><td class="model">{html.escape(name)}</td><td>{strength:g}</td>'
                        f'<td>{_fmt(m.get("held_out_loss"), 4)}</td><td>{_fmt(m.get("fad"), ".4g")}</td>'
                        f'<td>{flagged}/{m.get("num_clips", "?")}</td></tr>')
    return ('<h2>Strength</h2><p class="small">Each adapter at each --lora_scales strength (0 is the base model): '
            'held-out loss on the validation clips and FAD to them, on this evaluation\'s prompts and seeds.</p>'
            '<table id="strengths"><tr><th>model</th><th>strength</th><th>held-out loss</th><th>FAD (EnCodec)</th>'
            f'<th>clips flagged</th></tr>{"".join(body)}</table>')


def render(rows: list[dict], summary: dict) -> str:
    title = summary.get("title", "MusicGen evaluation")
    groups: OrderedDict[tuple, list[dict]] = OrderedDict()
    for r in rows:
        groups.setdefault((r["prompt_id"], r.get("sample", 0)), []).append(r)
    settings = summary.get("settings") or {}
    meta = [f"created {html.escape(str(summary.get('created', '')))}"]
    if summary.get("base_model"):
        meta.append(f"base model <code>{html.escape(str(summary['base_model']))}</code>")
    audio_format = _format_line(rows)
    if audio_format:
        meta.append(f'<span id="format">{html.escape(audio_format)}</span>')
    if settings:  # words, not Python's None/False: a setting that is off or unset says so
        shown = [f"{k} {'on' if v is True else 'off' if v is False else v}" for k, v in settings.items()
                 if v is not None]
        meta.append(html.escape(", ".join(shown)))
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f'<p class="meta">{" &middot; ".join(meta)}</p>', _listen_link(summary), _run_links(summary),
             _model_table(summary), _strength_table(summary)]
    plots = summary.get("loudness_plots") or {}
    for (pid, sample), group in groups.items():
        head = html.escape(pid) + (f" &middot; sample {sample}" if any(g.get("sample") for g in group) else "")
        parts.append(f'<section class="prompt-group"><h2>{head}</h2>')
        if group[0].get("prompt"):
            parts.append(f'<p class="prompt">&ldquo;{html.escape(group[0]["prompt"])}&rdquo;</p>')
        plot = plots.get(f"{pid}#{sample}")
        if plot:
            parts.append(f'<img class="loud" src="{_url(plot)}" alt="loudness over time for {html.escape(pid)}">')
        parts.append("<table><tr><th>model</th><th>listen</th><th>spectrogram</th><th>numbers</th></tr>")
        parts += _melody_rows(group) + _reference_rows(group)
        for r in group:
            audio = (f'<audio controls preload="metadata" src="{_url(r["wav"])}"></audio>' if r.get("wav") and
                     not r.get("error") else "")
            spec = (f'<img class="spec" src="{_url(r["spectrogram"])}" alt="spectrogram">'
                    if r.get("spectrogram") else "")
            parts.append(f'<tr><td class="model">{html.escape(r["model"])}</td><td>{audio}<div class="small">'
                         f'{html.escape(r.get("wav") or "")}</div></td><td>{spec}</td><td>{_clip_cell(r)}</td></tr>')
        parts.append("</table></section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(out_dir: Path, rows: list[dict], summary: dict) -> Path:
    path = Path(out_dir) / "report.html"
    atomic_write_text(path, render(rows, summary))
    return path
