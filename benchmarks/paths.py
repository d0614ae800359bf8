"""Where things are in the checkout, for the workshop's scripts (they run from the repository root as
`python -m benchmarks.NAME`, and the musicgen_lora package comes from the install)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LORA = ROOT / "finetune" / "lora"        # the user's scripts: train_lora.py, prepare_data.py, ...
SCRIPTS = ROOT / "finetune" / "scripts"  # the product's tools: make_tiny_model.py, memory_plan.py, ...


def child_env() -> dict:
    """The children import the same musicgen_lora as this process (and benchmarks from the root)."""
    import os

    import musicgen_lora

    paths = [str(Path(musicgen_lora.__file__).resolve().parents[1]), str(ROOT)]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))


def tiny_model(work: Path) -> Path:
    """The offline tiny MusicGen under `work` (built once, reused by later runs)."""
    from musicgen_lora.model.offline import build

    model = Path(work) / "tiny-musicgen"
    if not (model / "config.json").is_file():
        build(str(model))
    return model
