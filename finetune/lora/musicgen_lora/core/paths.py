"""Paths as a run records them: absolute in run_config.json (as typed under `as_given`), and
resolved back when a run written by an older version recorded them relative."""
import os
from pathlib import Path

# Settings that are paths. run_config.json stores them absolute (as typed under "as_given"), so a run
# is read, evaluated and compared the same from any folder.
PATH_KEYS = ("model_path", "data_dir", "output_dir", "cache_dir", "config", "sample_prompts",
             "resume_from_checkpoint")


def absolute_paths(settings: dict) -> dict:
    """A copy of `settings` with local paths made absolute (hub ids and 'latest' kept as typed)."""
    out, given = dict(settings), {}
    for key in PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or not value or value == "latest":
            continue
        path = Path(value).expanduser()
        if key == "model_path" and not path.exists() and not value.startswith((".", "/", "~")):
            continue  # a hub id such as facebook/musicgen-small
        absolute = os.path.abspath(path)
        if absolute != value:
            given[key], out[key] = value, absolute
    if given:
        out["as_given"] = given
    return out


def recorded_path(run_dir, config: dict, key: str) -> Path | None:
    """A path setting of a run, absolute. Runs written before paths were stored absolute recorded
    them relative to the folder they were started from; that folder follows from where the run dir
    is now and its recorded output_dir (run_dir = start / output_dir). None when it cannot be known."""
    value = config.get(key)
    if not isinstance(value, str) or not value:
        return None
    if Path(value).is_absolute():
        return Path(value)
    out = config.get("output_dir")
    if not isinstance(out, str) or Path(out).is_absolute():
        return None
    parts = Path(os.path.normpath(out)).parts
    ups = len(parts) - len([p for p in parts if p != ".."])
    if any(p == ".." for p in parts[ups:]):
        return None
    marker = "\0start"  # stands for the unknown names below which the run was started
    start = Path(os.path.abspath(run_dir)).joinpath(*[".."] * (len(parts) - ups)).joinpath(*[marker] * ups)
    resolved = os.path.normpath(start / value)
    return None if marker in resolved else Path(resolved)

