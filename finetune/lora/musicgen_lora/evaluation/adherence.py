"""Does a clip follow the tempo and key its prompt asked for? A prompt that names them ("... 120 bpm,
A minor", or audiocraft's merged form "key: a minor. bpm: 120") gets each clip's estimated tempo and
key (audio/tempo_key.py) compared with what was asked: per clip in its metrics, per model as counts in
the verdict and summary.json, so base/best/final can be compared on following the prompt, not only
on sounding clean. Prompts that name neither are not measured (nothing is estimated for them).
"""
from __future__ import annotations

import re

from musicgen_lora.audio.tempo_key import compare_key, compare_tempo, estimate_key, estimate_tempo, parse_key

# "120 bpm", "120bpm", "bpm: 120", "120 beats per minute"; 30-300 (anything else is not a tempo).
_TEMPO = re.compile(r"(?<![\d.])(\d{2,3}(?:\.\d+)?)\s*(?:bpm|beats per minute)\b|\bbpm\s*[:=]?\s*(\d{2,3}(?:\.\d+)?)",
                    re.IGNORECASE)
# "A minor", "F# major", "Bb minor", "E flat major", "key: a minor", "in the key of C major". A lower-case
# letter counts only after "key" ("a minor change" is not a key).
_KEY = re.compile(r"(?:\bkey(?:\s+of)?\s*[:=]?\s*([a-gA-G])|\b([A-G]))((?:#|b|♯|♭)|(?:[\s-](?:sharp|flat)))?"
                  r"\s+(major|minor)\b")


def asked(prompt) -> dict:
    """{"bpm": 120.0, "key": "A minor"}: what a prompt asks for, each only when named."""
    out = {}
    if not isinstance(prompt, str):
        return out
    m = _TEMPO.search(prompt)
    if m:
        bpm = float(m.group(1) or m.group(2))
        if 30 <= bpm <= 300:
            out["bpm"] = bpm
    m = _KEY.search(prompt)
    if m:
        letter = (m.group(1) or m.group(2)).upper()
        accidental = (m.group(3) or "").strip().lstrip("-")
        text = f"{letter}{accidental} {m.group(4)}" if accidental in ("", "#", "b", "♯", "♭") else \
            f"{letter}-{accidental} {m.group(4)}"
        if parse_key(text.replace("-sharp", "#").replace("-flat", "b")) is not None:
            out["key"] = text.replace("-sharp", "#").replace("-flat", "b")
    return out


def adherence(audio, sample_rate: int, prompt) -> dict:
    """The clip's metrics for what its prompt asks: asked_bpm, bpm, tempo_match ('right' within 4%,
    'half'/'double' an octave off, 'wrong'); asked_key, key, key_match ('exact', 'relative', 'fifth',
    'parallel', 'other'). {} when the prompt names neither. audio: (samples,) mono."""
    want = asked(prompt)
    out = {}
    if "bpm" in want:
        bpm = estimate_tempo(audio, sample_rate)
        out.update({"asked_bpm": want["bpm"], "bpm": bpm, "tempo_match": compare_tempo(bpm, want["bpm"])})
    if "key" in want:
        key = estimate_key(audio, sample_rate)
        out.update({"asked_key": want["key"], "key": key, "key_match": compare_key(key, want["key"])})
    return out


def model_adherence(metrics: list[dict]) -> dict:
    """Per model, over its clips' metrics: {"tempo_asked": n, "tempo_right": n, "tempo_octave": n,
    "key_asked": n, "key_exact": n, "key_near": n (relative or a fifth away)}, only the parts asked, and
    the shares the report's models table ranks: "tempo_as_asked" (right / asked), "key_as_asked"
    (exact / asked)."""
    out = {}
    tempo = [m.get("tempo_match") for m in metrics if "asked_bpm" in m]
    if tempo:
        out.update({"tempo_asked": len(tempo), "tempo_right": tempo.count("right"),
                    "tempo_octave": tempo.count("half") + tempo.count("double"),
                    "tempo_as_asked": round(tempo.count("right") / len(tempo), 4)})
    keys = [m.get("key_match") for m in metrics if "asked_key" in m]
    if keys:
        out.update({"key_asked": len(keys), "key_exact": keys.count("exact"),
                    "key_near": keys.count("relative") + keys.count("fifth"),
                    "key_as_asked": round(keys.count("exact") / len(keys), 4)})
    return out


def adherence_words(a: dict) -> list[str]:
    """['tempo 3/4 as asked (1 an octave off)', 'key 2/4 as asked (1 relative/fifth)'] for the verdict."""
    words = []
    if a.get("tempo_asked"):
        octave = f" ({a['tempo_octave']} an octave off)" if a.get("tempo_octave") else ""
        words.append(f"tempo {a['tempo_right']}/{a['tempo_asked']} as asked{octave}")
    if a.get("key_asked"):
        near = f" ({a['key_near']} relative/fifth)" if a.get("key_near") else ""
        words.append(f"key {a['key_exact']}/{a['key_asked']} as asked{near}")
    return words
