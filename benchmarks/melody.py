#!/usr/bin/env python
"""Does a melody adapter learn to follow the melody at a real architecture's size? A short run of
train_lora.py's training on two clips that share ONE description and differ only in their tune,
with the held-out loss under each clip's own melody and under a wrong one (the other clip's) at
every validation: an adapter that follows the melody opens a gap between the two that grows with
the steps; one that ignores it keeps them equal.

    python -m benchmarks.melody                           # musicgen-small's decoder, melody layout
    python -m benchmarks.melody --decoder_dropout 0 0.1   # the same run at each dropout, side by side
    python -m benchmarks.melody --size tiny --steps 2400 --eval_every 400

The checkpoint is built offline with random weights (make_tiny_model.py's builder at the size
asked, MusicGen-Melody layout: 235 chroma frames before the text), so losses start near or above
ln(2048); what is measured is whether the melody gets used, not music quality.
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

SR = 32000


def tune(pitch_classes, seconds_per_note=0.5, seed=0):
    """Sine notes (with a second harmonic) at the given pitch classes, octave 4."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds_per_note * SR)) / SR
    notes = [np.sin(2 * np.pi * 261.63 * 2 ** (p / 12) * t + rng.uniform(0, 2 * np.pi))
             + 0.3 * np.sin(4 * np.pi * 261.63 * 2 ** (p / 12) * t) for p in pitch_classes]
    return (0.3 * np.concatenate(notes)).astype(np.float32)


def two_tunes(folder: Path, seconds: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    n = int(seconds * SR)
    for name, notes, seed in (("A", [0, 4, 7, 11, 2, 5], 1), ("B", [6, 1, 10, 3, 8, 11], 2)):
        sf.write(folder / f"{name}.wav", tune(notes, seed=seed)[:n], SR)
    entries = [{"audio": f"{name}.wav", "description": "a synth tune"} for name in "AB"]
    (folder / "metadata.json").write_text(json.dumps({"train": entries * 1000, "valid": entries}))
    return folder


def run(model_dir: Path, data: Path, out: Path, args, decoder_dropout: float) -> list[dict]:
    from musicgen_lora.training.config import TrainConfig
    from musicgen_lora.training.trainer import train

    cfg = TrainConfig(model_path=str(model_dir), data_dir=str(data), output_dir=str(out),
                      target_duration=args.seconds, batch_size=1, gradient_accumulation_steps=1,
                      max_steps=args.steps, num_epochs=1000, learning_rate=args.learning_rate,
                      lora_rank=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0, text_dropout=0.0,
                      word_dropout=0.0, chroma_dropout=0.0, decoder_dropout=decoder_dropout,
                      eval_steps=args.eval_every, save_steps=0, logging_steps=args.eval_every, no_progress=True,
                      seed=args.seed).check()
    t0 = time.time()
    train(cfg)
    wall = time.time() - t0
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("type") == "eval"]
    print(f"\ndecoder dropout {decoder_dropout:g}: {args.steps} steps in {wall:.0f} s "
          f"({wall / args.steps:.2f} s/step including validations)")
    print(f"  {'step':>5}  {'own melody':>10}  {'wrong melody':>12}  {'gap (nats)':>10}  {'wrong/own':>9}")
    for r in evals:
        own, wrong = r["valid_loss"], r["valid_loss_wrong_melody"]
        print(f"  {r['step']:>5}  {own:>10.4f}  {wrong:>12.4f}  {wrong - own:>10.4f}  {wrong / own:>9.3f}")
    return evals


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "small", "medium"], default="small",
                   help="Decoder architecture (musicgen-melody is medium; small is the affordable real size on a "
                        "CPU).")
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--eval_every", type=int, default=40)
    p.add_argument("--seconds", type=float, default=2.0, help="Clip and window length.")
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--lora_rank", type=int, default=16)
    p.add_argument("--decoder_dropout", type=float, nargs="+", default=[0.0],
                   help="One run per value (0: audiocraft's, the toolkit's default; 0.1: the hub configs').")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--work_dir", default=None, help="Keep the model, data and runs here (default: a temp folder).")
    args = p.parse_args(argv)

    from musicgen_lora.core.common import setup_logging
    from musicgen_lora.model.offline import build

    setup_logging()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work_dir or tmp)
        model_dir = work / f"{args.size}-melody"
        if not (model_dir / "config.json").is_file():
            build(str(model_dir), size=args.size, melody=True, seed=0)
        data = two_tunes(work / "data", args.seconds)
        results = {d: run(model_dir, data, work / f"run-dropout-{d:g}", args, d) for d in args.decoder_dropout}
    print("\nsummary (last validation): " + "; ".join(
        f"decoder dropout {d:g}: own {r[-1]['valid_loss']:.4f}, wrong {r[-1]['valid_loss_wrong_melody']:.4f}"
        for d, r in results.items()))


if __name__ == "__main__":
    main()
