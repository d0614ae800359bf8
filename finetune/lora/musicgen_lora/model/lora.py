"""LoRA on MusicGen's decoder: which layers, attaching it for training, loading a saved adapter (a plain
PEFT folder) onto a base model, and what an adapter folder records of the run it came from."""
import types
from pathlib import Path

import torch

from musicgen_lora.core.common import UserError, parse_json, read_json
from musicgen_lora.model.checkpoint import (
    check_layout,
    describe_layout,
    model_layout,
)
from musicgen_lora.model.targets import ADAPTER_TYPES, DEFAULT_TARGETS, lora_target_regex


def _stay_in_eval_mode(self, mode=True):
    return torch.nn.Module.train(self, False)


def adapter_config(adapter_type: str, rank: int, alpha: float, dropout: float, target_modules=DEFAULT_TARGETS):
    """PEFT's config for one of ADAPTER_TYPES on the decoder's linear layers. LoHa/LoKr have no LoRA
    dropout: `dropout` is their rank dropout (rows of the update dropped)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    targets = lora_target_regex(target_modules)
    if adapter_type in ("lora", "rslora", "dora"):
        return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                          use_rslora=adapter_type == "rslora", use_dora=adapter_type == "dora")
    if adapter_type == "loha":
        return LoHaConfig(r=rank, alpha=alpha, rank_dropout=dropout, target_modules=targets)
    if adapter_type == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, rank_dropout=dropout, target_modules=targets)
    raise UserError(f"--adapter_type {adapter_type}: not one of {', '.join(ADAPTER_TYPES)}")


def config_adapter_type(config) -> str:
    """Which of ADAPTER_TYPES a PEFT config (object, or adapter_config.json's dict) describes."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    kind = str(getattr(get("peft_type", "LORA"), "value", get("peft_type", "LORA"))).lower()
    if kind == "lora":
        return "dora" if get("use_dora") else "rslora" if get("use_rslora") else "lora"
    return kind


def adapter_type_of(path) -> str:
    """Which of ADAPTER_TYPES a saved PEFT folder holds (its adapter_config.json)."""
    return config_adapter_type(read_json(Path(path) / "adapter_config.json", "adapter config"))


def apply_lora(model, rank: int, alpha: float, dropout: float, target_modules=DEFAULT_TARGETS,
               adapter_type: str = "lora"):
    """Freeze everything, add LoRA (or another of ADAPTER_TYPES) to the decoder's linear layers only.

    The frozen T5 text encoder stays in eval mode: in train mode its dropout would feed the decoder
    a randomly perturbed description every step (audiocraft keeps its T5 in eval mode too).
    """
    from peft import get_peft_model

    for param in model.parameters():
        param.requires_grad_(False)
    # Pinned to eval mode (T5 also applies functional dropout inside attention, so zeroing Dropout
    # modules is not enough); model.train() reaches children through this per-instance override.
    model.text_encoder.eval()
    model.text_encoder.train = types.MethodType(_stay_in_eval_mode, model.text_encoder)
    config = adapter_config(adapter_type, rank, alpha, dropout, target_modules)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"--lora_target_modules {','.join(target_modules)}: {e}") from None
    return peft_model


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_dir(path) -> Path:
    """A PEFT adapter folder this toolkit loads, or one clear line saying what the folder is instead."""
    path = Path(path)
    if not path.is_dir():
        what = "is a file, not an adapter folder" if path.exists() else "adapter folder not found"
        raise UserError(f"{path}: {what}; pass a best_model/, final_model/ or checkpoints/checkpoint-N/ folder "
                        f"written by train_lora.py")
    if not (path / "adapter_config.json").is_file():
        inside = [path / name for name in ("best_model", "final_model")
                  if (path / name / "adapter_config.json").is_file()]
        if inside:
            raise UserError(f"{path}: this is a training run directory, not an adapter; pass {inside[0]} (or use "
                            f"evaluate.py --compare_multi --lora_model_path {path})")
        raise UserError(f"{path}: no adapter_config.json here, so it is not a PEFT adapter; pass a best_model/, "
                        f"final_model/ or checkpoints/checkpoint-N/ folder written by train_lora.py")
    read_json(path / "adapter_config.json", "adapter config")
    if not (path / ADAPTER_WEIGHTS).is_file():
        if (path / "adapter_model.bin").is_file():
            # finetune/scripts/convert_adapter.py's main, as a command that works wherever the package is
            raise UserError(f"{path}: holds adapter_model.bin, a pickle, which this toolkit never loads (unpickling "
                            f"can run code); convert an adapter you trust with: python -m "
                            f"musicgen_lora.cli.convert_adapter {path}")
        raise UserError(f"{path}: adapter_config.json but no {ADAPTER_WEIGHTS}; the adapter was not saved "
                        f"completely: pass another adapter folder")
    return path


def check_adapter_weights(path: Path):
    """Before PEFT builds anything: the ranks adapter_config.json asks for must be the ranks of the saved
    tensors (PEFT allocates the config's rank first and compares shapes after -- r = 100000 took 1.5 GB on
    the tiny model, ~110 GiB at musicgen-small's width, before failing), and every weight must be finite
    (a NaN adapter ended in "probability tensor contains inf/nan" deep inside sampling)."""
    import torch
    from safetensors import safe_open

    config = read_json(path / "adapter_config.json", "adapter config")
    rank, pattern = config.get("r"), config.get("rank_pattern") or {}
    try:
        with safe_open(str(path / ADAPTER_WEIGHTS), framework="pt") as f:
            names = list(f.keys())
            for name in names:  # shapes from the header: nothing is read yet
                if ".lora_A." not in name:
                    continue
                saved = f.get_slice(name).get_shape()[0]
                wanted = next((r for key, r in pattern.items() if key in name), rank)
                if wanted != saved:
                    raise UserError(f"{path}: adapter_config.json asks for rank {wanted} but {ADAPTER_WEIGHTS} holds "
                                    f"rank-{saved} weights ({name}); the two files do not belong together: pass "
                                    f"another adapter folder")
            for name in names:  # LoRA weights are small (MBs): every one is checked
                if not torch.isfinite(f.get_tensor(name)).all():
                    raise UserError(f"{path}: {ADAPTER_WEIGHTS} holds NaN/inf in {name}: this adapter is broken "
                                    f"(a run that diverged?); pass another adapter, e.g. the run's best_model/ or "
                                    f"an earlier checkpoint")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: unreadable {ADAPTER_WEIGHTS} ({type(e).__name__}: {e}); pass another adapter "
                        f"folder") from None


def load_adapter(base_model, adapter_path, adapter_name: str = "default", is_trainable=False, into=None):
    """PeftModel.from_pretrained (or, with `into`, one more adapter on that PeftModel), with one clear
    line for a folder that is not a safetensors adapter of this base model."""
    from peft import PeftModel

    path = check_adapter_dir(adapter_path)
    info = read_json(path / "training_info.json", "training info") if (path / "training_info.json").is_file() else {}
    trained_on = read_json(path / "adapter_config.json").get("base_model_name_or_path")
    check_layout(info.get("model"), model_layout(base_model), str(path),
                 f"pass the base model it was trained on ({trained_on}) or an adapter trained on this one")
    check_adapter_weights(path)
    try:
        if into is not None:
            into.load_adapter(str(path), adapter_name=adapter_name, is_trainable=is_trainable)
            return into
        return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name, is_trainable=is_trainable)
    except Exception as e:  # a user's file: shape mismatch, wrong targets, corrupt weights
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if any(w in str(e) for w in ("size mismatch", "shape", "Target modules", "not found in the base model")):
            raise UserError(f"{path}: adapter does not fit this base model (trained on {trained_on!r}): "
                            f"{first}") from None
        raise UserError(f"{path}: cannot load this adapter ({type(e).__name__}: {first}); pass another adapter "
                        f"folder") from None


def adapter_step(adapter: Path) -> int | None:
    """The optimizer step an adapter was saved at (training_info.json), or None when unknown."""
    try:
        step = parse_json((Path(adapter) / "training_info.json").read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def adapter_run_id(adapter: Path) -> str | None:
    """The run id train_lora.py recorded beside an adapter (training_info.json, else the run's
    run_config.json), so results made from it are credited to that run and no other."""
    for path in (Path(adapter) / "training_info.json", Path(adapter).parent / "run_config.json",
                 Path(adapter).parent.parent / "run_config.json"):
        try:
            run_id = parse_json(path.read_text(encoding="utf-8")).get("run_id")
        except (OSError, ValueError, AttributeError):
            continue
        if run_id:
            return str(run_id)
    return None


# --------------------------------------------------------------------------------------------
# Strength and mixing: PEFT's per-adapter scaling, the saved weights never touched
# --------------------------------------------------------------------------------------------
def set_strengths(model, strengths: dict[str, float]):
    """Make exactly the adapters named in `strengths` active, each at its strength: its layers'
    scaling = strength x alpha / r (PEFT's LoraLayer.set_scale; sqrt(r) for rsLoRA). 0 adds nothing
    (W + 0·BA: the base model's outputs), 1 is the adapter as trained, above 1 stronger; several
    active adapters add their scaled deltas, which is a weighted mix. The merged copy generation
    runs (generate.generation_decoder) and merge_and_unload both merge at these scalings.
    DoRA's magnitude vector is not scaled: at 0 a DoRA adapter is not the base model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model.base_model.set_adapter(list(strengths), inference_mode=True)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and hasattr(module, "set_scale"):
            for name, strength in strengths.items():
                module.set_scale(name, strength)


def adapter_layout(path) -> dict | None:
    """The base model layout train_lora.py recorded beside an adapter (None if it recorded none)."""
    info = Path(path) / "training_info.json"
    layout = read_json(info, "training info").get("model") if info.is_file() else None
    return layout if isinstance(layout, dict) else None


def check_same_layout(paths, flag: str = "--lora_model_path"):
    """Adapters mixed in one generation must come from one base layout: each would otherwise be
    checked only against the base model, one at a time, and the line would not say the mix is the
    problem."""
    methods = {}  # one PeftModel holds adapters of one PEFT method (LoRA, rsLoRA and DoRA are one)
    for path in paths:
        methods.setdefault({"loha": "LoHa", "lokr": "LoKr"}.get(adapter_type_of(path), "LoRA"), path)
    if len(methods) > 1:
        (a, pa), (b, pb) = list(methods.items())[:2]
        raise UserError(f"{flag}: {pa} is a {a} adapter and {pb} a {b} one; PEFT mixes adapters of one method: "
                        f"LoRA/rsLoRA/DoRA together, LoHa with LoHa, LoKr with LoKr")
    known = [(p, layout) for p in paths if (layout := adapter_layout(p)) is not None]
    for path, layout in known[1:]:
        first, want = known[0]
        if any(layout.get(k) != v for k, v in want.items() if k in layout):
            raise UserError(f"{flag}: {first} was trained on a {describe_layout(want)} MusicGen but {path} on a "
                            f"{describe_layout(layout)} one; mix adapters trained on one base model")


def load_weighted(base_model, parts, flag: str = "--lora_model_path"):
    """PeftModel with every (adapter folder, strength) of `parts` loaded and active at its strength:
    one adapter ("default") or a weighted mix ("default", "mix1", ...)."""
    check_same_layout([path for path, _ in parts], flag)
    model, strengths = None, {}
    for i, (path, strength) in enumerate(parts):
        name = "default" if i == 0 else f"mix{i}"
        model = load_adapter(base_model, path, adapter_name=name, into=model)
        strengths[name] = strength
    set_strengths(model, strengths)
    return model
