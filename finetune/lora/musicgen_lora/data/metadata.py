"""metadata.json: which clips, with which descriptions, in which split -- read, checked, and the one
rule for the validation set. Also the text side: descriptions and prompts are cut to a bounded
number of tokens everywhere. See DATA_PREPARATION.md for the format:

    {"train": [{"audio": "train/clip_000.wav", "description": "lo-fi hip hop beat, vinyl crackle", ...}],
     "valid": [{"audio": "valid/clip_080.wav", "description": "..."}]}

A flat list of entries with a "split" field ("train"/"valid") is accepted too. For MusicGen-Melody,
an entry may name `condition_audio`: the file whose chroma conditions the clip (e.g. a vocal stem
for an accompaniment), instead of the clip itself.
"""
import functools
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from musicgen_lora.core.common import UserError, log, read_json

AUDIO_KEYS = ("audio", "audio_path", "path", "file", "file_name")
TEXT_KEYS = ("description", "text", "caption", "prompt")
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
                 "eval": "valid", "test": "valid"}
# Descriptions and prompts are cut to this many T5 tokens (T5's own training length). Unbounded, a
# 100 KB description made the text encoder's attention take 23 GB.
MAX_TEXT_TOKENS = 512


@dataclass
class Clip:
    audio_path: Path
    description: str
    split: str
    duration: float | None = None  # seconds, when known
    where: str = ""  # "metadata.json: entry 3", for messages about this clip
    condition_path: Path | None = None  # MusicGen-Melody: the audio whose chroma conditions it (None: the clip)
    store_index: int | None = None  # a clip of the code store (prepare_data.py --codes_only): its codes' index
    track: str | None = None  # the source track it was cut from (metadata "source"), when known
    bpm: float | None = None  # tempo and key (prepare_data.py --tempo_key, or the user's own), when known
    key: str | None = None

    @property
    def melody_path(self) -> Path:
        return self.condition_path or self.audio_path


def _first(entry: dict, keys):
    for key in keys:
        if entry.get(key) not in (None, ""):
            return entry[key]
    return None


RAW_AUDIO = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aif", ".aiff", ".m4a")  # what prepare_data.py reads


def read_metadata(data_dir, metadata_file="metadata.json", check_files=True) -> dict[str, list[Clip]]:
    """Read and validate metadata.json; returns {"train": [...], "valid": [...]}.

    Every problem names the file and the entry, so the user can fix it without a traceback.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: data directory not found; pass --data_dir pointing at the folder "
                        f"that holds metadata.json")
    meta_path = Path(metadata_file)
    if not meta_path.is_absolute():
        meta_path = data_dir / meta_path
    if not meta_path.is_file():
        found = (f for f in data_dir.rglob("*") if f.suffix.lower() in RAW_AUDIO and f.is_file())
        audio = len(list(itertools.islice(found, 1000)))
        if audio:  # a folder of raw audio: say how to prepare it, as quick_start does
            raise UserError(f"{meta_path}: not found, but {data_dir} holds {audio}{'+' if audio == 1000 else ''} audio "
                            f"files: prepare them first with: python prepare_data.py --input_dir {data_dir} "
                            f"--output_dir {data_dir.with_name(data_dir.name + '_prepared')} --default_description "
                            f"\"your style, in words\" (a .txt beside each file describes it better), then pass that "
                            f"folder as --data_dir")
    raw = read_json(meta_path, "metadata file (create it with prepare_data.py)")

    if isinstance(raw, dict) and any(k in raw for k in SPLIT_ALIASES):
        entries = []
        for key, items in raw.items():
            if key not in SPLIT_ALIASES:
                continue
            if not isinstance(items, list):
                raise UserError(f"{meta_path}: '{key}' must be a list of entries")
            entries += [(SPLIT_ALIASES[key], f'"{key}" entry {j}', e) for j, e in enumerate(items)]
    elif isinstance(raw, dict) and isinstance(raw.get("clips"), list):
        entries = [(None, f'"clips" entry {j}', e) for j, e in enumerate(raw["clips"])]
    elif isinstance(raw, list):
        entries = [(None, f"entry {j}", e) for j, e in enumerate(raw)]
    else:
        raise UserError(f"{meta_path}: expected {{\"train\": [...], \"valid\": [...]}} or a list of entries; "
                        f"see DATA_PREPARATION.md")

    splits = {"train": [], "valid": []}
    for split, label, entry in entries:
        where = f"{meta_path}: {label}"
        if not isinstance(entry, dict):
            raise UserError(f"{where} is not an object with 'audio' and 'description'")
        rel = _first(entry, AUDIO_KEYS)
        text = _first(entry, TEXT_KEYS)
        if rel is None:
            raise UserError(f"{where} has no audio path (one of {', '.join(AUDIO_KEYS)})")
        if not isinstance(rel, str):
            raise UserError(f"{where}: the audio path must be a string like \"train/clip_000.wav\", got {rel!r}")
        if text is None or not isinstance(text, str):
            raise UserError(f"{where} ({rel}) has no description text (one of {', '.join(TEXT_KEYS)})")
        raw_split = entry.get("split", "train")
        split = split or (SPLIT_ALIASES.get(raw_split.lower()) if isinstance(raw_split, str) else None)
        if split is None:
            raise UserError(f"{where} ({rel}) has unknown split {raw_split!r}; use train or valid")
        path = Path(rel)
        if not path.is_absolute():
            path = data_dir / path
        if check_files and not path.is_file():
            raise UserError(f"{path}: audio file not found (listed in {meta_path}, {label}); "
                            f"fix the path or remove the entry")
        duration = entry.get("duration")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float))
                                     or not math.isfinite(duration) or duration < 0):
            raise UserError(f"{where} ({rel}): 'duration' must be seconds as a number (e.g. 15.0), got "
                            f"{duration!r}; fix it or remove the key")
        condition = entry.get("condition_audio")
        if condition is not None:
            if not isinstance(condition, str) or not condition:
                raise UserError(f"{where} ({rel}): 'condition_audio' must be a path string like "
                                f"\"stems/vocals_000.wav\", got {condition!r}")
            condition = Path(condition) if Path(condition).is_absolute() else data_dir / condition
            if check_files and not condition.is_file():
                raise UserError(f"{condition}: condition audio not found (listed in {meta_path}, {label}); "
                                f"fix the path or remove 'condition_audio'")
        track = entry.get("source") if isinstance(entry.get("source"), str) and entry.get("source") else None
        splits[split].append(Clip(path, text.strip(), split, float(duration) if duration else None, where,
                                  condition, track=track, **music_info(entry)))
    if not splits["train"] and not splits["valid"]:
        raise UserError(f"{meta_path}: no clips listed")
    warn_duplicates(splits, meta_path)
    return splits


def warn_duplicates(splits: dict, meta_path: Path):
    """Warn about audio listed twice in a split (it counts double) and, above all, audio in both
    train and valid: validating on training clips reports a loss that means nothing."""
    def key(clip):
        return os.path.realpath(clip.audio_path)

    for name, clips in splits.items():
        seen, repeats = {}, []
        for clip in clips:
            if key(clip) in seen:
                repeats.append(f"{clip.audio_path.name} ({seen[key(clip)].where.rsplit(': ', 1)[-1]} and "
                               f"{clip.where.rsplit(': ', 1)[-1]})")
            seen.setdefault(key(clip), clip)
        if repeats:
            log.warning(f"warning: {meta_path}: {len(repeats)} clip(s) listed twice in {name}, e.g. "
                        f"{'; '.join(repeats[:3])}: each copy is trained/validated on again")
    both = sorted({key(c) for c in splits["train"]} & {key(c) for c in splits["valid"]})
    if both:
        shown = ", ".join(Path(p).name for p in both[:3]) + (f" and {len(both) - 3} more" if len(both) > 3 else "")
        log.warning(f"warning: {meta_path}: {len(both)} clip(s) are in both train and valid ({shown}): the "
                    f"validation loss on them measures memory, not generalisation; remove them from one split")


def validation_clips(splits: dict, max_clips: int | None = None) -> list[Clip]:
    """The validation set: the "valid" split, or (when there is none even after splits.hold_out_tracks:
    the data comes from one source track) the first tenth of the training clips -- the one rule the
    trainer, evaluate.py and test_model.py share. With max_clips, that many
    of them evenly spaced (a large collection's validation set would take an hour per evaluation;
    spacing keeps every part of the collection in it, and the same clips at every evaluation)."""
    clips = splits["valid"] or splits["train"][: max(1, len(splits["train"]) // 10)]
    if max_clips is None or len(clips) <= max_clips:
        return clips
    return [clips[i * len(clips) // max_clips] for i in range(max_clips)]


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------
def text_token_limit(tokenizer) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    return min(MAX_TEXT_TOKENS, limit) if isinstance(limit, int) and limit > 0 else MAX_TEXT_TOKENS


def tokenize_text(tokenizer, texts):
    """Descriptions/prompts -> padded token tensors, each cut to text_token_limit tokens. An empty
    text is the null condition: its attention mask is all zero, which MusicGen's forward turns into
    zero encoder states -- what generate() pairs with each prompt for classifier-free guidance (and
    what audiocraft gives a description that word dropout emptied)."""
    texts = list(texts)
    out = tokenizer(texts, padding=True, truncation=True, max_length=text_token_limit(tokenizer), return_tensors="pt")
    for i, text in enumerate(texts):
        if not text.strip():
            out["attention_mask"][i] = 0
    return out


def music_info(entry: dict) -> dict:
    """{"bpm": float, "key": str} of a metadata entry, each only when usable: audiocraft's get_bpm (a
    number or a numeric string) and get_musical_key (a non-empty string naming one key, lower-cased);
    anything else is left out, as audiocraft leaves it None, not an error."""
    out = {}
    bpm = entry.get("bpm")
    if bpm is not None and not isinstance(bpm, bool):
        try:
            value = float(bpm)
        except (TypeError, ValueError):
            value = None
        if value is not None and math.isfinite(value) and value > 0:
            out["bpm"] = value
    key = entry.get("key")
    if isinstance(key, str) and key.strip() and key != "None" and "," not in key:
        out["key"] = key.strip().lower()
    return out


def merge_music_info(description: str, bpm, key, rng, merge_p: float, drop_desc_p: float = 0.0,
                     keep_other_p: float = 0.5) -> str:
    """audiocraft's augment_music_info_description (audiocraft/data/music_dataset.py), for the two fields
    we have: with probability merge_p, each of "key: a minor" and "bpm: 120.0" that the clip has is kept
    with probability keep_other_p (audiocraft's drop_other_p: its test `uniform(0, 1) < drop_other_p`
    keeps the field, whatever the name says), the kept ones are shuffled and joined by ". ", the
    description is left out with probability drop_desc_p, and what remains is "description. key: a
    minor. bpm: 120.0". audiocraft's MusicDataset defaults merge_text_p (and the others) to 0: off
    unless asked (train_lora.py --merge_tempo_key_p). A user who later prompts "... 120 bpm, A minor"
    meets the words the adapter was trained with. rng: a numpy Generator (the dataset's)."""
    if merge_p <= 0 or rng.random() >= merge_p:
        return description
    pairs = [f"{name}: {value}" for name, value in (("key", key), ("bpm", bpm))
             if value is not None and rng.random() < keep_other_p]
    order = rng.permutation(len(pairs))
    meta = ". ".join(pairs[i] for i in order)
    if rng.random() < drop_desc_p:
        return meta if len(meta) > 1 else description
    return ". ".join([description.rstrip("."), meta]).strip() if meta else description


def drop_words(text: str, p: float, rng) -> str:
    """audiocraft's T5 word dropout: split on spaces, keep each word with probability 1 - p (all may
    go: the null condition). rng: a numpy Generator (the dataset's, seeded per clip and epoch)."""
    if p <= 0:
        return text
    words = text.split(" ")
    keep = rng.random(len(words)) >= p
    return " ".join(w for w, k in zip(words, keep) if k)


def report_long_descriptions(tokenizer, items) -> int:
    """Warn once per text that tokenize_text will cut. items: Clips, or (where, text) pairs.
    Returns how many were cut."""
    limit = text_token_limit(tokenizer)
    cut = 0
    for item in items:
        where, text = (item.where or str(item.audio_path), item.description) if isinstance(item, Clip) else item
        if len(text) + 2 <= limit:  # a token covers at least one character (plus "▁" and </s>)
            continue
        n = len(tokenizer(text)["input_ids"])
        if n > limit:
            cut += 1
            log.warning(f"warning: {where}: the text is {n} tokens long; only its first {limit} are used")
    return cut


def clip_facts(clips) -> dict:
    """How many clips and how many minutes of audio (lengths from metadata or file headers)."""
    return dict(_clip_facts(tuple((str(c.audio_path), c.duration) for c in clips)))


@functools.lru_cache(maxsize=8)
def _clip_facts(clips: tuple) -> tuple:
    from musicgen_lora.audio.reader import audio_duration  # soundfile: only when asked

    lengths = [d if d else audio_duration(p) for p, d in clips]
    known = [x for x in lengths if x is not None]
    return (("clips", len(clips)), ("minutes", sum(known) / 60 if known else None),
            ("unknown_length", len(lengths) - len(known)))
