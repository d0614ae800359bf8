"""The blind listening test: listen.html, its key, the ratings listeners save, and their tally.

Every evaluation writes, beside report.html (write_listening, called by scoring.write_results):
- listen/<group>/<letter>.wav: each prompt group's clips (a group: one prompt_id and sample) under
  the letters A, B, C... in an order drawn from a seed. They are hard links to the clips (copies of
  clips that live outside the folder, as --score_only's do), so no address the page uses names a
  model: the clip paths do (best_model/00_x.wav). A group's unrated references -- the real
  continuation of an audio prompt, the melody a clip followed -- are listen/<group>/reference.wav
  and melody.wav.
- listening_key.json: the seed, the evaluation id and the model behind every letter. The tally reads
  names from here only, never from a ratings file.
- listen.html: self-contained (inline CSS and JS, no network), from file:// or from
  `evaluate.py --listen` (listen_server.py). A 1-5 rating per clip and a note per prompt; everything
  entered is kept in the browser's localStorage under the evaluation id, so a reload loses nothing;
  Save posts the ratings to the server, Download JSON works everywhere. The letter -> model mapping
  is embedded obfuscated (XOR with the evaluation id, base64): the page's text, sources and
  attributes name no model until the listener presses Reveal, which locks the ratings. Someone who
  decodes the script can unmask the models; this keeps an honest listener blind, it is not a secret.

Ratings: ratings/<listener>-<UTC time>.json (check_ratings is the one check, for the server and the
tally). Why 1-5 per clip rather than "pick the best": it works the same for 2 or 6 models, a
listener can say that every clip is bad, and it gives each model a mean with an interval. The scale
words are the ITU-T P.800 absolute category rating's, which many listeners know.

Tally (tally_ratings, a pure function): a unit is one prompt group heard by one listener. Per model:
the mean rating over units with a 95% Student t interval. Per pair of models: the mean of the paired
differences over the units that rated both (pairing removes a listener's own offset, e.g. a harsh
rater), with its t interval; when that interval holds 0 the data cannot separate the two. Units
sharing a prompt or a listener are not independent, so with few prompts or few listeners the
intervals are optimistic: read "separates" as a lead to confirm with more prompts and listeners.
"""
from __future__ import annotations

import base64
import hashlib
import html
import itertools
import json
import math
import os
import random
import re
import secrets
import shutil
import statistics
import unicodedata
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from musicgen_lora.core.common import UserError, log, parse_json
from musicgen_lora.core.outputs import atomic_write_json, atomic_write_text

PAGE = "listen.html"
KEY_FILE = "listening_key.json"
CLIPS_DIR = "listen"
RATINGS_DIR = "ratings"
FORMAT = 1
KIND = "musicgen_lora listening ratings"
# ITU-T P.800 absolute category rating: the words many listeners already know.
SCALE = {1: "bad", 2: "poor", 3: "fair", 4: "good", 5: "excellent"}
CONFIDENCE = 0.95
# A t interval from two paired differences is either huge or, when they agree, zero wide; below
# three paired units a pair is reported as "too few to separate" instead.
MIN_PAIRED_UNITS = 3
# Bounds on what a page may send (the server refuses more): a paragraph per prompt is plenty, a name
# is a name, and a whole file for 500 prompts with full notes stays under the byte cap.
MAX_NOTE_CHARS = 4000
MAX_LISTENER_CHARS = 80
MAX_SESSION_CHARS = 64
MAX_RATINGS_BYTES = 4 << 20
SLUG_CHARS = 40  # listener part of a ratings file name
# Unrated references a row may carry, in the order they play: (row key, label, what it is).
REFERENCES = (("reference_audio", "reference", "the real continuation of the audio prompt"),
              ("melody", "melody", "the melody the clips were asked to follow"))


class RatingsError(ValueError):
    """A ratings file (or POST body) that does not fit this evaluation's key; the message says why."""


class ForeignRatings(RatingsError):
    """Ratings of another evaluation: never mixed in."""


# --------------------------------------------------------------------------------------------
# The page, its clips and its key (written with every evaluation)
# --------------------------------------------------------------------------------------------
def letters(n: int) -> list[str]:
    """A, B, ..., Z, AA, AB, ... (more than 26 models in one evaluation is unlikely, not impossible)."""
    out = []
    for size in itertools.count(1):
        for combo in itertools.product("ABCDEFGHIJKLMNOPQRSTUVWXYZ", repeat=size):
            if len(out) == n:
                return out
            out.append("".join(combo))
    return out


def evaluation_id(created, seed: int, clips) -> str:
    """A stable id for one evaluation: its creation time, its seed and its clip list. Ratings carry it,
    so ratings of another evaluation (another run, or this folder before an --overwrite) are told apart."""
    text = json.dumps({"created": created, "seed": seed, "clips": sorted(map(list, clips))}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def group_rows(out: Path, rows: list[dict]) -> OrderedDict:
    """{(prompt_id, sample): [rows]} in the evaluation's order; unreadable or missing clips left out."""
    groups: OrderedDict[tuple, list[dict]] = OrderedDict()
    for r in rows:
        if r.get("error") or not r.get("wav"):
            continue
        if not (out / r["wav"]).is_file():  # scored, then moved or deleted: the test goes on without it
            log.warning(f"warning: {r['wav']}: not found; left out of the blind listening test")
            continue
        groups.setdefault((r["prompt_id"], r.get("sample", 0) or 0), []).append(r)
    return groups


def _place(src: Path, dest: Path, out: Path, placed: dict):
    """dest becomes src's bytes: a hard link when src is inside the evaluation folder (no disk used),
    a copy otherwise (a link to a user's own file would let apply_umask change that file's mode) or
    where the file system has no hard links. A file placed before is linked from its first copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    real = src.resolve()
    first = placed.get(real)
    source = first if first is not None else src
    inside = first is not None or out.resolve() in real.parents
    try:
        if not inside:
            raise OSError("outside the evaluation folder")
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
    placed.setdefault(real, dest)


def write_listening(out: Path, rows: list[dict], summary: dict, seed: int | None = None) -> Path | None:
    """listen/, listening_key.json and listen.html in `out` (the folder being written; a row's wav,
    melody and reference_audio are relative to it). Returns the page, or None without clips."""
    out = Path(out)
    groups = group_rows(out, rows)
    if not groups:
        return None
    seed = secrets.randbits(63) if seed is None else seed  # stored in the key: the order can be re-drawn
    clips = [(r["prompt_id"], r.get("sample", 0) or 0, r["model"], r["wav"]) for g in groups.values() for r in g]
    eid = evaluation_id(summary.get("created"), seed, clips)
    width = max(2, len(str(len(groups))))
    shutil.rmtree(out / CLIPS_DIR, ignore_errors=True)  # built whole each time: no clip of another draw stays
    placed: dict[Path, Path] = {}
    key_groups = []
    for index, ((prompt_id, sample), group) in enumerate(groups.items(), start=1):
        gid = f"g{index:0{width}d}"
        order = sorted(group, key=lambda r: (r["model"], r["wav"]))
        random.Random(f"{seed}:{gid}").shuffle(order)  # one draw per group, reproducible from the seed
        entry = {"id": gid, "prompt_id": prompt_id, "sample": sample, "prompt": group[0].get("prompt"),
                 "clips": {}, "references": []}
        for letter, r in zip(letters(len(order)), order):
            rel = f"{CLIPS_DIR}/{gid}/{letter}{Path(r['wav']).suffix.lower()}"
            _place(out / r["wav"], out / rel, out, placed)
            entry["clips"][letter] = {"model": r["model"], "wav": r["wav"], "file": rel}
        for field, label, _what in REFERENCES:
            for source in dict.fromkeys(r[field] for r in group if r.get(field)):
                if not (out / source).is_file():
                    log.warning(f"warning: {source}: {label} of prompt {prompt_id} not found; the blind page "
                                f"plays its clips without it")
                    continue
                number = len([x for x in entry["references"] if x["kind"] == label])
                rel = f"{CLIPS_DIR}/{gid}/{label}{number + 1 if number else ''}{Path(source).suffix.lower()}"
                _place(out / source, out / rel, out, placed)
                entry["references"].append({"kind": label, "wav": source, "file": rel})
        key_groups.append(entry)
    key = {"format": FORMAT, "evaluation_id": eid, "created": summary.get("created"), "seed": seed,
           "scale": [min(SCALE), max(SCALE)], "groups": key_groups}
    atomic_write_json(out / KEY_FILE, key)
    page = out / PAGE
    atomic_write_text(page, render_page(key))
    return page


def is_blind_copy(path: Path) -> bool:
    """True for a clip of an evaluation's listen/ folder (a second name of a clip already there):
    --score_only over an old evaluation must not score it again as a model called 'listen'."""
    folder = Path(path).parent.parent
    return folder.name == CLIPS_DIR and (folder.parent / KEY_FILE).is_file()


def read_key(folder: Path) -> dict:
    """An evaluation's listening_key.json, checked enough to trust its shape."""
    path = Path(folder) / KEY_FILE
    fix = (f"pass an evaluation folder written by evaluate.py; an older evaluation gets one from "
           f"evaluate.py --score_only --input_dir {folder} --output_dir {Path(folder).name}_blind")
    if not path.is_file():
        raise UserError(f"{path}: not found; {fix}")
    try:
        key = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); {fix}") from None
    ok = (isinstance(key, dict) and isinstance(key.get("evaluation_id"), str) and isinstance(key.get("groups"), list)
          and all(isinstance(g, dict) and isinstance(g.get("id"), str) and isinstance(g.get("clips"), dict)
                  and all(isinstance(c, dict) and isinstance(c.get("model"), str) for c in g["clips"].values())
                  for g in key["groups"]))
    if not ok:
        raise UserError(f"{path}: not a listening key (no evaluation_id, or groups without clips); {fix}")
    return key


def _obfuscate(mapping: dict, eid: str) -> str:
    """base64 of the JSON XOR the evaluation id: no model name in the page's source at a glance."""
    data = json.dumps(mapping, separators=(",", ":")).encode("utf-8")
    pad = eid.encode("ascii")
    return base64.b64encode(bytes(b ^ pad[i % len(pad)] for i, b in enumerate(data))).decode("ascii")


def _url(rel: str) -> str:
    return quote(rel.replace("\\", "/"))


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto 7em;max-width:980px;
  color:#1d1d1f;padding:0 1em}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.05em;margin:1.4em 0 .2em}
.meta,.small{color:#555;font-size:.88em} .prompt{font-style:italic;margin:.2em 0 .5em}
.pid{color:#777;font-weight:normal;font-size:.85em;margin-left:.5em}
section.prompt-group{border-top:1px solid #ddd;padding-bottom:.6em}
table{border-collapse:collapse;width:100%} td{padding:.3em .5em;vertical-align:middle}
td.letter{font-weight:700;font-size:1.25em;width:8em;white-space:nowrap}
tr.ref td.letter{font-size:.9em;font-weight:600;color:#555} tr.ref td{background:#f4f8ff}
.model-name{font-size:.75em;font-weight:600;color:#0b57d0;margin-left:.4em}
audio{width:300px;vertical-align:middle}
.rating label{display:inline-block;margin-right:.55em;cursor:pointer;font-size:.9em;white-space:nowrap}
.rating label span{color:#666;font-size:.85em}
textarea.note{width:100%;box-sizing:border-box;min-height:2.6em;font:inherit;font-size:.9em;margin-top:.3em}
#bar{position:fixed;left:0;right:0;bottom:0;background:#fff;border-top:1px solid #ccc;padding:.55em 1em;
  box-shadow:0 -2px 6px rgba(0,0,0,.06)}
#bar .inner{max-width:980px;margin:0 auto;display:flex;flex-wrap:wrap;gap:.5em;align-items:center}
#status{flex-basis:100%;font-size:.85em;color:#188038;min-height:1.1em} #status.bad{color:#a50e0e}
#listener{font:inherit;padding:.15em .3em;width:11em}
button{font:inherit;font-size:.9em;padding:.25em .8em;cursor:pointer}
#finish{border-top:1px solid #ddd;margin-top:1.5em;padding-top:.5em}
.warn{background:#fef7e0;color:#7a4a00;padding:.4em .6em;border-radius:4px}
body.revealed .rating input{accent-color:#999}
"""

JS = r"""
(() => {
  "use strict";
  const DATA = JSON.parse(document.getElementById("listening-data").textContent);
  const KEY = "musicgen_lora.listen." + DATA.evaluation_id;
  const $ = (sel, el = document) => el.querySelector(sel);
  const $$ = (sel, el = document) => Array.from(el.querySelectorAll(sel));
  const served = location.protocol === "http:" || location.protocol === "https:";
  let store = null;  // localStorage, when this browser keeps it for this page
  try {
    localStorage.setItem(KEY + ".probe", "1");
    localStorage.removeItem(KEY + ".probe");
    store = localStorage;
  } catch (e) { store = null; }

  function newSession() {
    const b = new Uint8Array(8);
    crypto.getRandomValues(b);
    return Array.from(b, x => x.toString(16).padStart(2, "0")).join("");
  }
  function fresh() {
    return {listener: "", session: newSession(), ratings: {}, notes: {}, revealed: false, revealed_at: null,
            saved: null, unsaved: false};
  }
  function load() {
    try {
      const s = store && JSON.parse(store.getItem(KEY));
      if (s && typeof s === "object" && typeof s.session === "string") return Object.assign(fresh(), s);
    } catch (e) { /* a broken entry: start afresh */ }
    return fresh();
  }
  let state = load();
  function persist() {
    if (!store) return;
    try { store.setItem(KEY, JSON.stringify(state)); }
    catch (e) { say("this browser did not keep your entries (" + e.message + "): save or download now", true); }
  }
  function say(text, bad) {
    const s = $("#status");
    s.textContent = text;
    s.className = bad ? "bad" : "";
  }
  function names() {
    const raw = atob(DATA.key), pad = new TextEncoder().encode(DATA.evaluation_id);
    const bytes = Uint8Array.from(raw, (c, i) => c.charCodeAt(0) ^ pad[i % pad.length]);
    return JSON.parse(new TextDecoder().decode(bytes));
  }
  function counts() {
    let rated = 0, total = 0;
    for (const g of DATA.groups) {
      total += g.letters.length;
      rated += g.letters.filter(l => (state.ratings[g.id] || {})[l] !== undefined).length;
    }
    return [rated, total];
  }
  function show() {
    for (const input of $$(".rating input")) {
      const r = state.ratings[input.dataset.group] || {};
      input.checked = r[input.dataset.letter] === Number(input.value);
      input.disabled = state.revealed;
    }
    for (const note of $$("textarea.note")) {
      note.value = state.notes[note.dataset.group] || "";
      note.readOnly = state.revealed;
    }
    $("#listener").value = state.listener;
    const [rated, total] = counts();
    $("#progress").textContent = rated + " of " + total + " clips rated" +
      (state.unsaved ? " · not saved yet" : state.saved ? " · saved as " + state.saved : "");
    document.body.classList.toggle("revealed", state.revealed);
    $("#reveal").hidden = state.revealed;
    $("#revealed").hidden = !state.revealed;
    const mapping = state.revealed ? names() : {};
    for (const span of $$(".model-name")) {
      span.textContent = state.revealed ? "= " + ((mapping[span.dataset.group] || {})[span.dataset.letter] || "?") : "";
    }
  }
  function changed() {
    state.unsaved = true;
    persist();
    show();
  }
  function ratings() {
    const groups = {};
    for (const g of DATA.groups) {
      const r = state.ratings[g.id] || {}, note = (state.notes[g.id] || "").trim();
      if (Object.keys(r).length || note) {
        groups[g.id] = {prompt_id: g.prompt_id, sample: g.sample, ratings: r, note: note};
      }
    }
    const out = {format: DATA.format, kind: DATA.kind, evaluation_id: DATA.evaluation_id,
                 listener: state.listener.trim(), session: state.session, time: new Date().toISOString(),
                 scale: DATA.scale, revealed: state.revealed, revealed_at: state.revealed_at, groups: groups};
    if (state.revealed) out.models = names();
    return out;
  }
  function slug(name) {
    const s = name.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").replace(/[^A-Za-z0-9_-]+/g, "-")
      .replace(/^-+|-+$/g, "").slice(0, DATA.slug_chars).replace(/-+$/, "");
    return s || "anonymous";
  }
  function named() {
    if (state.listener.trim()) return true;
    say("enter your name first: it names the ratings file", true);
    $("#listener").focus();
    return false;
  }
  async function save() {
    if (!named()) return;
    try {
      const resp = await fetch("ratings", {method: "POST", headers: {"Content-Type": "application/json"},
                                           body: JSON.stringify(ratings())});
      const answer = await resp.json().catch(() => ({error: resp.status + " " + resp.statusText}));
      if (!resp.ok) throw new Error(answer.error || resp.statusText);
      state.saved = answer.saved;
      state.unsaved = false;
      persist();
      show();
      say("saved " + answer.saved + " in the evaluation folder");
    } catch (e) {
      say("not saved: " + e.message + " (Download JSON keeps your ratings too)", true);
    }
  }
  function download() {
    if (!named()) return;
    const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
    const file = slug(state.listener) + "-" + stamp + ".json";
    const blob = new Blob([JSON.stringify(ratings(), null, 2) + "\n"], {type: "application/json"});
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = file;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 5000);
    say("downloaded " + file + ": put it into the evaluation folder's ratings/, then run evaluate.py --tally");
  }

  document.addEventListener("change", e => {
    const t = e.target;
    if (t.matches(".rating input") && !state.revealed) {
      (state.ratings[t.dataset.group] = state.ratings[t.dataset.group] || {})[t.dataset.letter] = Number(t.value);
      changed();
    }
  });
  document.addEventListener("input", e => {
    const t = e.target;
    if (t.matches("textarea.note") && !state.revealed) { state.notes[t.dataset.group] = t.value; changed(); }
    if (t.id === "listener") { state.listener = t.value; changed(); }
  });
  // One clip at a time: starting one pauses the others.
  document.addEventListener("play", e => $$("audio").forEach(a => { if (a !== e.target) a.pause(); }), true);
  $("#save").hidden = !served;
  $("#file-note").hidden = served;
  $("#no-storage").hidden = !!store;
  $("#save").addEventListener("click", save);
  $("#download").addEventListener("click", download);
  $("#reveal").addEventListener("click", () => {
    const [rated, total] = counts();
    $("#reveal-count").textContent = rated + " of " + total;
    $("#reveal-confirm").hidden = false;
  });
  $("#reveal-no").addEventListener("click", () => { $("#reveal-confirm").hidden = true; });
  $("#reveal-yes").addEventListener("click", () => {
    $("#reveal-confirm").hidden = true;
    // Ratings saved before the reveal stay saved: revealing changes no rating, so it does not make the
    // page say "not saved yet" (it did, after Save then Reveal).
    const saved = state.saved && !state.unsaved;
    state.revealed = true;
    state.revealed_at = new Date().toISOString();
    changed();
    if (saved) { state.unsaved = false; persist(); show(); }
    say(saved ? "model names shown next to each letter; your ratings were saved as " + state.saved
              : "model names shown next to each letter; your ratings are locked (save or download them)");
  });
  $("#restart").addEventListener("click", () => { $("#restart-confirm").hidden = false; });
  $("#restart-no").addEventListener("click", () => { $("#restart-confirm").hidden = true; });
  $("#restart-yes").addEventListener("click", () => {
    $("#restart-confirm").hidden = true;
    state = fresh();
    persist();
    show();
    say("cleared: a new listener starts here (files saved before are kept)");
  });
  show();
})();
"""


def render_page(key: dict) -> str:
    """listen.html for a key: every clip under its letter; no model name anywhere but obfuscated."""
    eid = key["evaluation_id"]
    groups = key["groups"]
    many = any(g.get("sample") for g in groups)
    labels = {kind: what for _field, kind, what in REFERENCES}
    parts = []
    for number, g in enumerate(groups, start=1):
        gid = html.escape(g["id"])
        sample = f" &middot; sample {g['sample']}" if many else ""
        parts.append(f'<section class="prompt-group" id="{gid}"><h2>Prompt {number} of {len(groups)}{sample}'
                     f'<span class="pid">{html.escape(str(g["prompt_id"]))}</span></h2>')
        if g.get("prompt"):
            parts.append(f'<p class="prompt">&ldquo;{html.escape(g["prompt"])}&rdquo;</p>')
        parts.append("<table>")
        for ref in g.get("references", []):
            what = labels.get(ref["kind"], "")
            parts.append(f'<tr class="ref"><td class="letter">{html.escape(ref["kind"])}</td><td><audio controls '
                         f'preload="metadata" src="{_url(ref["file"])}"></audio></td><td class="small">not rated: '
                         f'{html.escape(what)}</td></tr>')
        for letter, clip in g["clips"].items():
            radios = "".join(
                f'<label><input type="radio" name="{gid}-{letter}" value="{v}" data-group="{gid}" '
                f'data-letter="{letter}"> {v} <span>{word}</span></label>' for v, word in SCALE.items())
            parts.append(f'<tr class="clip" data-letter="{letter}"><td class="letter">{letter}<span '
                         f'class="model-name" data-group="{gid}" data-letter="{letter}"></span></td><td><audio '
                         f'controls preload="metadata" src="{_url(clip["file"])}"></audio></td>'
                         f'<td class="rating">{radios}</td></tr>')
        parts.append(f'</table><textarea class="note" data-group="{gid}" placeholder="Note (optional): what you '
                     f'heard, what made the difference"></textarea></section>')
    mapping = {g["id"]: {letter: c["model"] for letter, c in g["clips"].items()} for g in groups}
    data = {"format": FORMAT, "kind": KIND, "evaluation_id": eid, "scale": key.get("scale", [1, 5]),
            "slug_chars": SLUG_CHARS, "key": _obfuscate(mapping, eid),
            "groups": [{"id": g["id"], "prompt_id": g["prompt_id"], "sample": g.get("sample", 0),
                        "letters": list(g["clips"])} for g in groups]}
    blob = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")  # no "</script>" inside the script
    most = max(len(g["clips"]) for g in groups)
    scale = ", ".join(f"{v} {w}" for v, w in SCALE.items())
    return "\n".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1"><title>Blind listening test</title>',
        f"<style>{CSS}</style></head><body>",
        "<h1>Blind listening test</h1>",
        f'<p class="meta">{len(groups)} prompt(s), up to {most} clips each from different models, in a random '
        f'order per prompt &middot; evaluation {html.escape(eid)} &middot; created '
        f'{html.escape(str(key.get("created") or ""))}</p>',
        f'<p>Rate every clip on its own ({html.escape(scale)}); a note per prompt says why. Which model made '
        f'which clip stays hidden until you press Reveal at the end (that locks your ratings). Keep '
        f'report.html closed until then: it names the models. Your entries stay in this browser across '
        f'reloads; Save (or Download JSON) hands them in.</p>',
        '<p id="no-storage" class="warn" hidden>This browser keeps nothing for this page across reloads: save or '
        'download before you close it, or open it through <code>evaluate.py --listen</code>.</p>',
        *parts,
        '<section id="finish"><h2>When you are done</h2>',
        '<p><button id="reveal" type="button">Reveal model names</button>'
        '<span id="reveal-confirm" hidden> You rated <b id="reveal-count"></b> clips; after the reveal they are '
        'locked. <button id="reveal-yes" type="button">Reveal</button> <button id="reveal-no" type="button">'
        'Cancel</button></span><span id="revealed" hidden>Model names are shown beside each letter.</span></p>',
        '<p><button id="restart" type="button">Start over as another listener</button><span id="restart-confirm" '
        'hidden> This clears this browser\'s entries for this page (saved files are kept). <button id="restart-yes" '
        'type="button">Clear</button> <button id="restart-no" type="button">Cancel</button></span></p></section>',
        '<div id="bar"><div class="inner"><label>Your name <input id="listener" autocomplete="name" '
        f'maxlength="{MAX_LISTENER_CHARS}"></label>'
        '<span id="progress"></span><button id="save" type="button">Save</button>'
        '<button id="download" type="button">Download JSON</button>'
        '<span id="file-note" class="small" hidden>Opened as a file: Download JSON, then put the file into the '
        'evaluation folder\'s ratings/ (or open the page with <code>evaluate.py --listen</code> to save there '
        'directly).</span><div id="status"></div></div></div>',
        f'<script id="listening-data" type="application/json">{blob}</script>',
        f"<script>{JS}</script>",
        "</body></html>\n",
    ])


# --------------------------------------------------------------------------------------------
# Ratings files
# --------------------------------------------------------------------------------------------
def listener_slug(name: str) -> str:
    """The listener part of a file name: ascii letters, digits, - and _ ('Jörg M.' -> 'Jorg-M');
    the page names its downloads by the same rule."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_name).strip("-")[:SLUG_CHARS].rstrip("-")
    return slug or "anonymous"


def ratings_filename(listener: str, when: datetime) -> str:
    return f"{listener_slug(listener)}-{when.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_ratings(data, key: dict) -> dict:
    """A ratings document (a saved file or a POST body) checked against this evaluation's key and
    returned clean: only the fields the page writes, ratings as ints on the scale. Raises
    ForeignRatings for another evaluation's, RatingsError for anything malformed."""
    if not isinstance(data, dict):
        raise RatingsError("not a JSON object")
    eid = data.get("evaluation_id")
    if eid != key["evaluation_id"]:
        raise ForeignRatings(f"ratings of evaluation {eid!r}, not of this one ({key['evaluation_id']})")
    listener = data.get("listener")
    if not isinstance(listener, str) or not listener.strip() or len(listener) > MAX_LISTENER_CHARS:
        raise RatingsError(f"listener must be a name of 1 to {MAX_LISTENER_CHARS} characters")
    session = data.get("session")
    if session is not None and (not isinstance(session, str) or len(session) > MAX_SESSION_CHARS):
        raise RatingsError(f"session must be a string of at most {MAX_SESSION_CHARS} characters")
    groups = data.get("groups")
    if not isinstance(groups, dict):
        raise RatingsError("groups must be an object (group id -> ratings and note)")
    known = {g["id"]: g for g in key["groups"]}
    low, high = min(SCALE), max(SCALE)
    clean_groups = {}
    for gid, entry in groups.items():
        if gid not in known:
            raise RatingsError(f"group {gid!r} is not in this evaluation")
        if not isinstance(entry, dict):
            raise RatingsError(f"group {gid}: not an object")
        scores = entry.get("ratings", {})
        if not isinstance(scores, dict):
            raise RatingsError(f"group {gid}: ratings must be an object (letter -> {low}..{high})")
        for letter, value in scores.items():
            if letter not in known[gid]["clips"]:
                raise RatingsError(f"group {gid}: no clip {letter!r}")
            if not _is_int(value) or not low <= value <= high:
                raise RatingsError(f"group {gid}, clip {letter}: rating {value!r} is not a whole number {low}..{high}")
        note = entry.get("note", "")
        if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
            raise RatingsError(f"group {gid}: note must be text of at most {MAX_NOTE_CHARS} characters")
        clean_groups[gid] = {"prompt_id": known[gid]["prompt_id"], "sample": known[gid].get("sample", 0),
                             "ratings": {k: scores[k] for k in sorted(scores)}, "note": note}
    clean = {"format": FORMAT, "kind": KIND, "evaluation_id": eid, "listener": listener.strip(),
             "session": session, "time": data.get("time") if isinstance(data.get("time"), str) else None,
             "revealed": data.get("revealed") is True, "groups": clean_groups}
    if clean["revealed"]:  # for a person reading the file; the tally reads names from the key only
        clean["models"] = {gid: {letter: known[gid]["clips"][letter]["model"] for letter in known[gid]["clips"]}
                           for gid in clean_groups}
    return clean


def read_ratings(folder: Path, key: dict) -> tuple[list[dict], list[str]]:
    """Every usable ratings file in folder/ratings, each with its 'file'; and the warnings for the
    files left out (another evaluation's, unreadable, malformed). When a listener saved more than once
    from one browser (one session), the latest save holds everything: the earlier ones are dropped."""
    where = Path(folder) / RATINGS_DIR
    found, warnings = [], []
    files = sorted(p for p in where.glob("*.json") if p.is_file() and not p.name.startswith("."))
    for path in files:
        rel = f"{RATINGS_DIR}/{path.name}"
        try:
            data = parse_json(path.read_text(encoding="utf-8"))
            clean = check_ratings(data, key)
        except ForeignRatings as e:
            warnings.append(f"{rel}: {e}; ignored (ratings never mix across evaluations)")
            continue
        except (OSError, ValueError) as e:  # RatingsError is a ValueError, as is bad JSON
            warnings.append(f"{rel}: {e}; ignored")
            continue
        clean["file"] = rel
        clean["saved_at"] = data.get("saved_at") if isinstance(data.get("saved_at"), str) else None
        found.append(clean)
    latest: dict[str, dict] = {}
    for r in found:
        who = r["session"] or r["file"]  # a file without a session is its own listener
        if who not in latest or _when(r) > _when(latest[who]):
            latest[who] = r
    for r in found:
        who = r["session"] or r["file"]
        if latest[who] is not r:
            log.info(f"note: {r['file']}: an earlier save of {latest[who]['file']} (same listener and browser), "
                     f"not counted twice")
    return [r for r in found if latest[r["session"] or r["file"]] is r], warnings


def _when(r: dict) -> tuple:
    """When a ratings file was saved (the server's clock, else the page's), for 'the latest save'."""
    for stamp in (r.get("saved_at"), r.get("time")):
        try:
            when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))  # the page writes ...Z
        except (AttributeError, ValueError):
            continue
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp(), r["file"]
    return float("-inf"), r["file"]


def observations(ratings: list[dict], key: dict) -> list[tuple[str, str, str, int]]:
    """(listener, group, model, rating) per rated clip; models from the key, never from the file."""
    groups = {g["id"]: g for g in key["groups"]}
    out = []
    for r in ratings:
        who = r["session"] or r["file"]
        for gid, entry in r["groups"].items():
            for letter, value in entry["ratings"].items():
                out.append((who, gid, groups[gid]["clips"][letter]["model"], value))
    return out


# --------------------------------------------------------------------------------------------
# The tally
# --------------------------------------------------------------------------------------------
def t_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the Student t interval for the mean; no bounds from fewer than 2 values."""
    from scipy.stats import t as student_t  # a dependency already (style_distance); loaded only to tally

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = student_t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _clamp(x, low, high):
    return None if x is None else min(max(x, low), high)


def tally_ratings(obs, confidence: float = CONFIDENCE, scale: tuple[int, int] = (min(SCALE), max(SCALE))) -> dict:
    """The tally of (listener, group, model, rating) observations.

    A unit is one group heard by one listener (two clips of one model in a group: their mean).
    models: {model: {mean, low, high, n}} ordered best first; pairs: for each two models, the paired
    difference (first minus second) over the units that rated both, its interval, how often the
    first was rated higher / the same / lower, and `separated`: the interval excludes 0 over at least
    MIN_PAIRED_UNITS units. Intervals are clamped to what the scale allows (a t interval is
    symmetric and overshoots 5 with few units; a mean cannot)."""
    lo, hi = scale
    cells: dict[tuple, list[int]] = {}
    for listener, group, model, rating in obs:
        cells.setdefault((group, listener, model), []).append(rating)
    units: dict[str, dict[tuple, float]] = {}
    for (group, listener, model), values in cells.items():
        units.setdefault(model, {})[(group, listener)] = statistics.fmean(values)
    models = {}
    for model, by_unit in units.items():
        mean, low, high = t_interval(list(by_unit.values()), confidence)
        models[model] = {"mean": mean, "low": _clamp(low, lo, hi), "high": _clamp(high, lo, hi), "n": len(by_unit)}
    order = sorted(models, key=lambda m: (-models[m]["mean"], m))
    models = {m: models[m] for m in order}
    pairs = []
    for a, b in itertools.combinations(order, 2):
        shared = sorted(set(units[a]) & set(units[b]))
        diffs = [units[a][u] - units[b][u] for u in shared]
        entry = {"a": a, "b": b, "n": len(diffs), "mean_difference": None, "low": None, "high": None,
                 "higher": sum(d > 0 for d in diffs), "tied": sum(d == 0 for d in diffs),
                 "lower": sum(d < 0 for d in diffs), "separated": False}
        if diffs:
            mean, low, high = t_interval(diffs, confidence)
            span = hi - lo
            entry.update(mean_difference=mean, low=_clamp(low, -span, span), high=_clamp(high, -span, span))
            entry["separated"] = bool(len(diffs) >= MIN_PAIRED_UNITS and (low > 0 or high < 0))
        pairs.append(entry)
    return {"models": models, "pairs": pairs, "confidence": confidence, "scale": [lo, hi],
            "units": len({u for by_unit in units.values() for u in by_unit}),
            "listeners": len({listener for listener, *_ in obs}), "groups": len({g for _, g, *_ in obs}),
            "interval": f"{confidence:.0%} Student t interval over prompt x listener units"}


def _num(x, signed=False) -> str:
    return "-" if x is None else f"{x:+.2f}" if signed else f"{x:.2f}"


def _span(low, high, signed=False) -> str:
    return "no interval (1 unit)" if low is None else f"[{_num(low, signed)}, {_num(high, signed)}]"


def pair_line(p: dict) -> str:
    """One pair of the tally in words: 'best_model > base_model: ...' or '... cannot separate ...'."""
    counts = f"rated higher in {p['higher']}, the same in {p['tied']}, lower in {p['lower']}"
    if not p["n"]:
        return f"{p['a']} and {p['b']}: cannot separate (no listener rated both on one prompt)"
    diff = (f"difference {_num(p['mean_difference'], True)} {_span(p['low'], p['high'], True)} over "
            f"{p['n']} paired unit(s); {p['a']} {counts}")
    if p["separated"]:
        better, worse = (p["a"], p["b"]) if p["mean_difference"] > 0 else (p["b"], p["a"])
        return f"{better} > {worse}: {diff}"
    why = "too few paired units" if p["n"] < MIN_PAIRED_UNITS else "the interval holds 0"
    return f"{p['a']} and {p['b']}: cannot separate ({why}): {diff}"


def tally_lines(result: dict) -> list[str]:
    """The tally as evaluate.py --tally prints it."""
    lo, hi = result["scale"]
    scale = f"ratings {lo} ({SCALE.get(lo, lo)}) to {hi} ({SCALE.get(hi, hi)})"
    lines = [f"blind listening test: {result['listeners']} listener(s), {result['groups']} prompt(s), "
             f"{result['units']} prompt x listener unit(s); {scale}"]
    width = max(len("model"), *(len(m) for m in result["models"]))
    lines.append(f"{'model':<{width}}  mean  {result['confidence']:.0%} interval   n")
    for name, m in result["models"].items():
        lines.append(f"{name:<{width}}  {_num(m['mean'])}  {_span(m['low'], m['high']):<13}  {m['n']}")
    lines += [pair_line(p) for p in result["pairs"]]
    lines.append(f"intervals: {result['interval']} (units sharing a prompt or a listener are not independent: "
                 f"with few of either, read a separation as a lead)")
    return lines


def short_tally(listening: dict, models=None) -> str:
    """The tally in one table cell (compare_runs): 'best_model 3.94 [3.52, 4.35] n=16; ...; cannot separate
    best_model and final_model'; only `models` when given."""
    shown = {n: m for n, m in (listening.get("models") or {}).items()
             if isinstance(m, dict) and (models is None or n in models) and isinstance(m.get("mean"), (int, float))}
    if not shown:
        return ""
    parts = [f"{n} {_num(m['mean'])} {_span(m.get('low'), m.get('high'))} n={m.get('n')}" for n, m in shown.items()]
    close = [f"{p['a']} and {p['b']}" for p in listening.get("pairs") or []
             if isinstance(p, dict) and p.get("a") in shown and p.get("b") in shown and not p.get("separated")]
    listeners = listening.get("listeners")
    tail = f" ({listeners} listener{'s' if listeners != 1 else ''})" if isinstance(listeners, int) else ""
    return "; ".join(parts) + tail + ("; cannot separate " + ", ".join(close) if close else "")


def model_lines(result: dict, model: str) -> list[str]:
    """What one model's card shows of a tally: its mean rating with the interval, and every pair it is in."""
    m = result["models"].get(model)
    if m is None:
        return []
    head = (f"mean rating {_num(m['mean'])} {_span(m['low'], m['high'])} over {m['n']} prompt x listener unit(s) "
            f"({result['listeners']} listener(s), {result['groups']} prompt(s), blind; 1 bad to 5 excellent)")
    return [head] + [pair_line(p) for p in result["pairs"] if model in (p["a"], p["b"])]


def tally_folder(folder: Path) -> dict:
    """evaluate.py --tally: read folder/ratings against the folder's key, tally, and record the result
    in folder/summary.json under "listening" (compare_runs shows it). Returns the tally."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; pass --tally an evaluation folder (evaluate.py --output_dir)")
    key = read_key(folder)
    ratings, warnings = read_ratings(folder, key)
    for w in warnings:
        log.warning(f"warning: {w}")
    where = folder / RATINGS_DIR
    obs = observations(ratings, key)
    if not obs:
        skipped = f" ({len(warnings)} file(s) left out, see the warnings above)" if warnings else ""
        raise UserError(f"{where}: no ratings of this evaluation{skipped}; rate the clips in the page served by "
                        f"evaluate.py --listen {folder} and press Save (or put the JSON that listen.html's "
                        f"Download JSON gives into {where})")
    result = tally_ratings(obs)
    result.update(evaluation_id=key["evaluation_id"], files=[r["file"] for r in ratings],
                  tallied=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    summary_path = folder / "summary.json"
    try:
        summary = parse_json(summary_path.read_text(encoding="utf-8"))
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        log.warning(f"warning: {summary_path}: unreadable ({e}); the tally is printed but not recorded there")
        return result
    summary["listening"] = result
    atomic_write_json(summary_path, summary)
    result["summary_written"] = str(summary_path)
    return result
