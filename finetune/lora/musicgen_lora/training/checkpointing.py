"""Everything a run needs to survive a kill: checkpoint folders, resume, rotation, run-dir guards.

A checkpoint is one folder, written atomically (temp dir, then rename), so a kill mid-save leaves
the previous checkpoints untouched:

    checkpoints/checkpoint-N/
        adapter_config.json, adapter_model.safetensors   plain PEFT adapter (usable as-is)
        optimizer.pt, scheduler.pt[, scaler.pt]          plain state dicts (torch.load weights_only)
        rng_state.pt                                     per-rank RNG states + loop accumulators
        trainer_state.json                               step, epoch, data position, best loss, ...

trainer_state.json is written last inside the temp dir; a folder without it is never resumed from.
"""
import json
import random
import re
from pathlib import Path

import numpy as np
import torch

from musicgen_lora.core.common import UserError, read_json
from musicgen_lora.core.outputs import (
    Survey,
    atomic_dir,
    atomic_write_json,
    check_writable,
    clean_stale,
    kind_of,
    remove_owned,
    remove_path,
    survey,
)
from musicgen_lora.model.checkpoint import check_layout

TOOL = "train_lora.py"
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
RNG_FILE = "rng_state.pt"
FORMAT_VERSION = 1
# Everything train_lora.py writes into a run dir (its manifest lists these).
RUN_PATHS = ("run_config.json", "logs", CHECKPOINTS, "best_model", "final_model", "samples")
# Settings that fix the meaning of "step" and "position in the data order": a resume with other
# values cannot continue the same run.
# (The base model's layout, also saved under "run", is compared by model.checkpoint.check_layout, in words.)
# adapter_type: rsLoRA's weights load into LoRA's layers without a word and would mean another scale
RESUME_CRITICAL = ("batch_size", "gradient_accumulation_steps", "num_processes", "seed", "adapter_type")


# --------------------------------------------------------------------------------------------
# Run directory
# --------------------------------------------------------------------------------------------
def survey_run_dir(output_dir: Path) -> Survey:
    """What the run dir holds for train_lora.py: its own outputs (listed in its manifest, or by name
    for runs written before manifests), evaluations and clips made from it, anything else."""
    return survey(output_dir, TOOL, legacy_paths=RUN_PATHS, allow_derived=True)


def _advice(output_dir: Path, foreign: list) -> str:
    """What the user can do with an existing run, so that every suggestion works."""
    finished = (Path(output_dir) / "final_model").is_dir() or (Path(output_dir) / "logs" / "summary.json").is_file()
    replace = ("pass --overwrite_output_dir to replace it" if not foreign else
               f"move {', '.join(foreign[:3])} out and pass --overwrite_output_dir to replace it")
    if not finished and list_checkpoints(output_dir):
        return f"continue it with --resume_from_checkpoint latest, choose a new --output_dir, or {replace}"
    why = "it finished" if finished else "it has no checkpoint to resume from"
    return f"{why}: choose a new --output_dir, or {replace}"


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool) -> Survey:
    """Refuse to mix a new run into a folder that holds one, or anything else (before anything is
    written). Returns the survey an --overwrite_output_dir later acts on (clear_run)."""
    output_dir = Path(output_dir)
    check_writable(output_dir, "--output_dir")
    s = survey_run_dir(output_dir)
    if s.busy:
        raise UserError(f"{output_dir}: {s.describe(s.busy)} is being written by another process; wait for it to "
                        f"finish, or choose another --output_dir")
    if resuming:
        return s
    if s.manifest is not None and s.manifest.get("tool") != TOOL:
        raise UserError(f"{output_dir}: holds {kind_of(s.manifest)} (written by {s.manifest['tool']}); choose "
                        f"another --output_dir")
    ours = s.owned + s.derived
    if not ours:
        if s.foreign:
            raise UserError(f"{output_dir}: holds files train_lora.py did not write ({s.describe(s.foreign)}); "
                            f"choose an empty or new --output_dir")
        return s
    if not overwrite:
        raise UserError(f"{output_dir}: already holds a training run ({s.describe(ours, 6)}); "
                        f"{_advice(output_dir, s.foreign)}")
    if s.foreign:
        raise UserError(f"{output_dir}: holds a training run and files train_lora.py did not write "
                        f"({s.describe(s.foreign)}); move those out or choose a new --output_dir "
                        f"(--overwrite_output_dir only replaces what train_lora.py wrote)")
    return s


def clear_run(output_dir: Path):
    """--overwrite_output_dir: remove every output of the previous run -- its adapters, checkpoints,
    logs, samples and the evaluations and clips made from it -- so none of them is mistaken for the
    new run's. Checked again here (the folder may have changed since the start)."""
    s = check_output_dir(output_dir, overwrite=True, resuming=False)
    remove_owned(s)


def recover_interrupted_saves(folder: Path):
    """Tidy what a killed save can leave in `folder` (see outputs.clean_stale)."""
    clean_stale(folder)


def resume_hint(output_dir: Path) -> str:
    """How to continue after an interruption or a failed write, naming the checkpoint it would use."""
    ckpts = list_checkpoints(output_dir)
    if ckpts:
        return (f"continue with the same command plus --resume_from_checkpoint latest (newest checkpoint: "
                f"{ckpts[-1][1].name})")
    return ("start again with the same command plus --overwrite_output_dir (no checkpoint was written yet; "
            "they are written every --save_steps steps)")


# --------------------------------------------------------------------------------------------
# Finding checkpoints
# --------------------------------------------------------------------------------------------
def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (trainer_state.json present), oldest first."""
    folder = Path(output_dir) / CHECKPOINTS
    found = []
    if folder.is_dir():
        for d in folder.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", d.name)
            if m and (d / STATE_FILE).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def resolve_resume_path(output_dir: Path, value: str) -> Path:
    """`latest` -> newest complete checkpoint of output_dir; otherwise a checkpoint folder path."""
    if value == "latest":
        recover_interrupted_saves(Path(output_dir) / CHECKPOINTS)
        ckpts = list_checkpoints(output_dir)
        if not ckpts:
            has_run = bool(survey_run_dir(output_dir).owned) if Path(output_dir).is_dir() else False
            instead = ("start it again with --overwrite_output_dir instead" if has_run
                       else "start without --resume_from_checkpoint")
            raise UserError(f"{Path(output_dir) / CHECKPOINTS}: no checkpoint to resume from; {instead} "
                            f"(checkpoints are written every --save_steps steps)")
        return ckpts[-1][1]
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise UserError(f"{path}: not a resumable checkpoint (no {STATE_FILE}); pass a "
                        f"checkpoints/checkpoint-N folder or 'latest'")
    return path


def rotate_checkpoints(output_dir: Path, keep: int | None):
    """Keep the newest `keep` checkpoints. best_model/ and final_model/ live elsewhere and are never
    touched. A folder is renamed before deletion so a kill mid-delete never leaves a half checkpoint
    that looks complete."""
    if not keep:
        return
    for _, path in list_checkpoints(output_dir)[:-keep]:
        remove_path(path)


# --------------------------------------------------------------------------------------------
# RNG states (python, numpy, torch, CUDA) in forms torch.load(weights_only=True) accepts
# --------------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, accelerator, model, optimizer, scheduler, state: dict, rank_state: dict,
                    adapter_info: dict | None = None):
    """Write one checkpoint folder atomically. Call on every rank: each rank's RNG state and
    `rank_state` (tensors, numbers, lists) are gathered and the main process writes them."""
    per_rank = {"rng": capture_rng_state(), **rank_state}
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        all_ranks = gather_object([per_rank])
    else:
        all_ranks = [per_rank]
    if not accelerator.is_main_process:
        return
    with atomic_dir(path) as tmp:
        accelerator.unwrap_model(model).save_pretrained(str(tmp))
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / SCALER_FILE)
        torch.save({f"rank{i}": s for i, s in enumerate(all_ranks)}, tmp / RNG_FILE)
        if adapter_info:
            atomic_write_json(tmp / "training_info.json", adapter_info)
        atomic_write_json(tmp / STATE_FILE, {"format_version": FORMAT_VERSION, **state})  # last: marks complete


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: missing from the checkpoint; resume from another one") from None
    except Exception as e:
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                        f"resume from another checkpoint") from None


def read_trainer_state(path: Path) -> dict:
    state = read_json(Path(path) / STATE_FILE, "trainer state")
    if state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path / STATE_FILE}: checkpoint format {state.get('format_version')!r} is not "
                        f"{FORMAT_VERSION}; it was written by another version of train_lora.py")
    return state


def recorded_threads(path: Path, output_dir: Path) -> int | None:
    """The CPU threads the run being resumed ran with: its checkpoint's record, else (a checkpoint
    written before checkpoints recorded it) the run's run_config.json; None when neither says."""
    threads = read_trainer_state(path).get("threads")
    if threads is None:
        try:
            threads = json.loads((Path(output_dir) / "run_config.json").read_text()).get("threads")
        except (OSError, ValueError, AttributeError):
            return None
    return threads if isinstance(threads, int) and threads > 0 else None


def check_resume_compatible(path: Path, state: dict, current: dict):
    """Refuse a resume whose batch layout differs (the data position would mean something else)."""
    saved = state.get("run", {})
    if "model" in saved:  # another base model: its layout in words, before any weight is touched
        check_layout(saved["model"], current["model"], str(path),
                     "resume with the --model_path the run started with (see run_config.json)")
    diff = [f"{k}: {saved[k]} -> {current[k]}" for k in RESUME_CRITICAL if k in saved and saved[k] != current[k]]
    if diff:
        raise UserError(f"{path}: cannot resume with different {', '.join(diff)}; use the settings the run "
                        f"started with (see run_config.json)")


def load_checkpoint(path: Path, accelerator, model, optimizer, scheduler) -> tuple[dict, dict]:
    """Restore adapter weights, optimizer, scheduler and grad scaler in place (every rank).
    Returns (trainer_state, this rank's saved state incl. RNG); call restore_rng_state last."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    state = read_trainer_state(path)
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights}: missing from the checkpoint; resume from another one")
    try:
        result = set_peft_model_state_dict(accelerator.unwrap_model(model), load_file(str(weights)))
        unexpected = getattr(result, "unexpected_keys", None)
    except RuntimeError as e:  # shape mismatch: another rank / targets
        unexpected = [str(e).strip().splitlines()[-1][:160]]
    if unexpected:
        raise UserError(f"{weights}: adapter does not match this model/LoRA settings ({unexpected[:3]}); resume "
                        f"with the run's --model_path and --lora_* flags (see run_config.json)")
    optimizer.load_state_dict(_torch_load(path / OPTIMIZER_FILE))
    scheduler.load_state_dict(_torch_load(path / SCHEDULER_FILE))
    if accelerator.scaler is not None and (path / SCALER_FILE).is_file():
        accelerator.scaler.load_state_dict(_torch_load(path / SCALER_FILE))
    ranks = _torch_load(path / RNG_FILE)
    mine = ranks.get(f"rank{accelerator.process_index}")
    if mine is None:
        raise UserError(f"{path}: written by {len(ranks)} processes, resumed with {accelerator.num_processes}; "
                        f"resume with the same number of processes")
    return state, mine
