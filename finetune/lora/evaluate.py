#!/usr/bin/env python
"""Compare the base model with LoRA adapters on a fixed prompt set, side by side.

    python evaluate.py --base_model_path /path/to/musicgen-small \\
        --lora_model_path ../output_epoch1 --compare_multi \\
        --test_prompts_file ../data/eval/evaluation_prompts_8.json \\
        --output_dir ../output_epoch1/evaluation --duration 15

--compare        base vs the adapter at --lora_model_path
--compare_multi  base, best_model and final_model (from --best_model_path/--final_model_path, or found
                 in the run directory given as --lora_model_path)
--adapter N=P    add any adapter (repeatable), e.g. --adapter r16=../output_r16/best_model

The base model is loaded once and adapters are swapped on it; every model gets each prompt with the
same seed, so differences come from the weights. Writes OUTPUT_DIR/<model>/NN_prompt.wav (+ .json
sidecar, .png spectrogram), comparison_results.jsonl (one row per prompt x model x sample),
summary.json and report.html (open it in a browser to listen).
"""
import argparse
import sys
from pathlib import Path

from common import UserError, cli, log, resolve_device
from inference_lora import add_sampling_args


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("models")
    m.add_argument("--base_model_path", default="facebook/musicgen-small", help="Local MusicGen folder or hub id.")
    m.add_argument("--lora_model_path", default=None,
                   help="An adapter folder (--compare) or a training run directory holding best_model/ and "
                        "final_model/ (--compare_multi).")
    m.add_argument("--best_model_path", default=None, help="best_model adapter (default: LORA_MODEL_PATH/best_model).")
    m.add_argument("--final_model_path", default=None,
                   help="final_model adapter (default: LORA_MODEL_PATH/final_model).")
    m.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                   help="Another adapter to compare under NAME (repeatable).")
    m.add_argument("--compare", action="store_true", help="Compare the base model with --lora_model_path.")
    m.add_argument("--compare_multi", action="store_true", help="Compare base, best_model and final_model.")

    q = p.add_argument_group("prompts and output")
    q.add_argument("--test_prompts_file", default=None,
                   help="JSON list of prompts (strings or {\"prompt\", \"id\", \"seed\"} objects), e.g. "
                        "../data/eval/evaluation_prompts_8.json.")
    q.add_argument("--test_prompts", nargs="+", default=None, help="Prompts given on the command line.")
    q.add_argument("--num_samples_per_prompt", type=int, default=1, help="Clips per prompt and model (seed, seed+1, ...).")
    q.add_argument("--output_dir", default="../output/evaluation", help="Folder for clips, results and report.")
    add_sampling_args(p)
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    from evaluation import check_output_dir, compare_models, resolve_models
    from generation import SamplingSettings, load_prompts, plan_jobs, resolve_dtype
    from modeling import load_model_and_processor

    specs = resolve_models(args)
    prompts = load_prompts(args.test_prompts_file, args.test_prompts)
    settings = SamplingSettings(args.guidance_scale, args.temperature, args.top_k, args.top_p, args.greedy)
    settings.validate()
    jobs = plan_jobs(prompts, args.num_samples_per_prompt, args.seed)
    out = Path(args.output_dir)
    check_output_dir(out, args.overwrite)

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.fp16, args.bf16, device)
    model, processor = load_model_and_processor(args.base_model_path, device=device, dtype=dtype)
    from generation import check_duration

    check_duration(model, args.duration)
    log.info(f"comparing {', '.join(s.name for s in specs)} on {len(prompts)} prompt(s) x "
             f"{args.num_samples_per_prompt} sample(s)")
    summary = compare_models(model, processor, specs, jobs, out, duration=args.duration, settings=settings,
                             batch_size=args.batch_size, wav_subtype=args.wav_subtype,
                             progress=not args.no_progress, base_model_path=args.base_model_path)
    log.info(f"wrote {len(jobs) * len(specs)} clips, comparison_results.jsonl, summary.json and "
             f"{out / 'report.html'}")
    for name, m in summary["models"].items():
        if m.get("verdict"):
            print(m["verdict"])


if __name__ == "__main__":
    sys.exit(main())
