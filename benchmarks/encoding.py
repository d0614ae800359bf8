"""Benchmark: EnCodec encoding of clips one at a time vs batched, measured in one run.

    python -m benchmarks.encoding                          # tiny and small, offline
    python -m benchmarks.encoding --sizes small --num_clips 64 --device cuda

Builds random-weight checkpoints offline (make_tiny_model.py's build) in a temp folder, writes
--num_clips synthetic clips of --duration seconds (grooves at different tempi and keys,
musicgen_lora/evaluation/signals.py), reads them through audio.AudioPieces and encodes them one at a
time (model.codec.encode_pieces per clip) and batched (encoding.encode_batched, --batch_size pieces per
codec call, what the code cache does), in turn --repeats times, keeping each way's fastest. Prints
files/s and hours of audio per hour of each, their ratio, and whether the batched codes equal the
one-at-a-time codes (they must: exit 1 if not). `small` has musicgen-small's EnCodec (57.6 M
parameters), far slower than tiny's: on a CPU it encodes --num_clips_small clips.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

from musicgen_lora.cli.args import Parser, positive_float, positive_int
from musicgen_lora.cli.runner import cli
from musicgen_lora.core.common import peak_rss_mb

SMALL_CLIPS_ON_CPU = 8


@cli
def main(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--sizes", nargs="+", choices=["tiny", "small"], default=["tiny", "small"],
                   help="Random-weight checkpoints to measure (small: musicgen-small's codec).")
    p.add_argument("--num_clips", type=positive_int, default=24, help="Clips to encode per size.")
    p.add_argument("--num_clips_small", type=positive_int, default=None,
                   help=f"Clips for `small` (default: {SMALL_CLIPS_ON_CPU} on a CPU, --num_clips on a GPU).")
    p.add_argument("--duration", type=positive_float, default=15.0,
                   help="Seconds per clip (15: the segments prepare_data.py writes).")
    p.add_argument("--batch_size", type=positive_int, default=8, help="Pieces per codec call, batched.")
    p.add_argument("--repeats", type=positive_int, default=2,
                   help="Measure each way this many times, in turn, and keep the fastest (a busy machine varies).")
    p.add_argument("--stereo", action="store_true", help="Stereo checkpoints and clips (each channel a row).")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda.")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's own choice.")
    args = p.parse_args(argv)

    import torch

    from musicgen_lora.core.common import resolve_device
    from musicgen_lora.model.checkpoint import load_model_and_processor
    from musicgen_lora.model.offline import build

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    counts = {size: clip_count(args, size, device) for size in args.sizes}
    load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if device == "cpu" else ""
    print(f"device {device}, {torch.get_num_threads()} threads{load}; batch {args.batch_size} pieces per codec call; "
          f"clips of {args.duration:g} s ({'stereo' if args.stereo else 'mono'}, synthetic grooves)")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        clips = write_clips(Path(tmp) / "clips", max(counts.values()), args.duration, args.stereo)
        for size in args.sizes:
            path = build(Path(tmp) / size, size, seed=0, stereo=args.stereo)
            model, _ = load_model_and_processor(str(path), device=device)
            failed |= not compare(model, size, clips[:counts[size]], args)
            del model
    return 1 if failed else 0


def clip_count(args, size: str, device: str) -> int:
    if size != "small" or device != "cpu":
        return args.num_clips
    return args.num_clips_small or min(args.num_clips, SMALL_CLIPS_ON_CPU)


def write_clips(folder: Path, n: int, seconds: float, stereo: bool) -> list[Path]:
    """n different grooves as 32 kHz WAVs (what prepare_data.py writes); stereo: drums on the right."""
    import numpy as np
    import soundfile as sf

    from musicgen_lora.audio.reader import MUSICGEN_SAMPLE_RATE as SR
    from musicgen_lora.evaluation.signals import drum_loop, varied_beat

    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        audio = varied_beat(seconds, SR, bpm=90 + 3 * i, key=i % 12, seed=i)
        if stereo:
            audio = np.stack([audio, 0.8 * drum_loop(seconds, SR, bpm=90 + 3 * i, seed=i)], axis=1)
        paths.append(folder / f"{i:03d}.wav")
        sf.write(paths[-1], audio, SR, subtype="PCM_16")
    return paths


def compare(model, size: str, clips: list[Path], args) -> bool:
    """Time both ways on the same clips, print them; True when the codes are equal."""
    import torch

    from musicgen_lora.model.checkpoint import model_info
    from musicgen_lora.model.codec import encode_pieces
    from musicgen_lora.model.encoding import encode_batched

    def read(path):
        audio = clip_pieces(model, path)
        return (audio.read(j) for j in range(audio.num_pieces))

    def one_at_a_time():
        return [encode_pieces(model, read(path)).cpu() for path in clips]

    def batched():
        return [codes for _, codes in encode_batched(model, ((path, read(path)) for path in clips),
                                                     batch_size=args.batch_size)]

    encode_pieces(model, read(clips[0]))  # warm-up: the first call pays for allocation and kernel choice
    names = ("one at a time", f"batched ({args.batch_size})")
    codes, best, memory = {}, dict.fromkeys(names, float("inf")), {}
    for _ in range(args.repeats):
        for name, work in zip(names, (one_at_a_time, batched)):
            codes[name], seconds, peak = timed(model, work)
            best[name] = min(best[name], seconds)
            memory.setdefault(name, peak)  # the first round's: a CPU's peak so far includes the rounds before
    equal = sum(torch.equal(a, b) for a, b in zip(*codes.values()))
    audio_s = sum(clip_pieces(model, path).num_samples for path in clips) / model_info(model)["sample_rate"]
    fewer = " (fewer on a CPU: its codec is musicgen-small's; --num_clips_small)" \
        if size == "small" and len(clips) < args.num_clips else ""
    print(f"{size} (random weights): {len(clips)} clips{fewer}, {audio_s:g} s of audio, fastest of {args.repeats}")
    for name in names:
        print(f"  {name:<14} {best[name]:8.2f} s  {len(clips) / best[name]:7.2f} files/s  "
              f"{audio_s / best[name]:8.1f} h of audio per hour  {memory[name]}")
    print(f"  batched / one at a time: {best[names[0]] / best[names[1]]:.2f}x the throughput; batched codes equal "
          f"the one-at-a-time codes for {equal}/{len(clips)} clips" + ("" if equal == len(clips) else "  MISMATCH"))
    return equal == len(clips)


def clip_pieces(model, path):
    from musicgen_lora.audio.reader import AudioPieces, piece_samples
    from musicgen_lora.model.checkpoint import model_info

    info = model_info(model)
    return AudioPieces(path, info["sample_rate"], piece_samples(info["sample_rate"], info["hop_length"]),
                       info["audio_channels"])


def timed(model, work) -> tuple:
    """(what work() returns, its wall seconds, the peak memory it left)."""
    import torch

    cuda = next(model.parameters()).device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = work()
    if cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start, peak_memory(model)


def peak_memory(model) -> str:
    """CUDA: the peak of the last measurement; CPU: the process's peak resident memory so far."""
    import torch

    if next(model.parameters()).device.type == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return f"peak RSS so far {peak_rss_mb() / 1024:.2f} GiB"


if __name__ == "__main__":
    sys.exit(main())
