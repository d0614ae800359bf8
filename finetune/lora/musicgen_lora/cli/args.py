"""The command-line layer every script shares: the parser, typed flag values, YAML config files.

- `Parser`: a bad flag is one `error:` line (exit 2), and `--help` shows every default.
- Typed values (`positive_int`, `probability`, ...): ranges are checked while parsing, so a flag on
  the command line and the same key in a config file meet the same rule, before anything loads.
- YAML config files: parser defaults < --config FILE.yaml < command line. Configs are data: a flat
  mapping of flag names (as in `--help`, without dashes) to values. Unknown keys are an error
  naming the key and the file, so a typo never silently falls back to a default.

Nothing here imports torch or transformers: `--help` stays instant.
"""
import argparse
import math
import sys
from pathlib import Path

from musicgen_lora.core.common import UserError
from musicgen_lora.core.precision import PRECISIONS, requested
from musicgen_lora.generation.sampling import (
    DEFAULT_OVERLAP_SHARE,
    DEFAULT_WINDOW_S,
    WAV_SUBTYPES,
    SamplingSettings,
    WindowPlan,
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and shows every flag's default (unless its help says it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or not action.option_strings or "default" in text.lower():
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.default is None or action.default == []:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


THREADS_HELP = ("CPU threads for torch (default: the CPUs this process may use minus those busy right now; "
                "OMP_NUM_THREADS wins when set). Results can differ slightly between thread counts.")


class Parser(argparse.ArgumentParser):
    """argparse with one `error: ...` line for a bad flag (no usage dump) and defaults in --help.

    Every script also gets `--threads N` (threads.py): applied right after parsing, before torch is
    imported. A script that defines its own --threads keeps it (and its meaning): the shared flag
    steps aside. threads_flag=False (or add_help=False, a parent parser) leaves it out.
    """

    def __init__(self, *args, threads_flag: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        self._threads_action = None  # before argparse's own __init__, which adds -h through add_argument
        super().__init__(*args, **kwargs)
        if threads_flag and self.add_help:
            self._threads_action = super().add_argument("--threads", type=positive_int, default=None,
                                                        metavar="N", help=THREADS_HELP)

    def _yield_threads(self, option_strings):
        """A script's own --threads replaces the shared one (argparse would refuse the duplicate)."""
        action = self._threads_action
        if action is None or not set(option_strings) & set(action.option_strings):
            return
        self._threads_action = None
        self._remove_action(action)
        for option in action.option_strings:
            self._option_string_actions.pop(option, None)
        for group in self._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)

    def add_argument(self, *args, **kwargs):
        self._yield_threads(args)
        return super().add_argument(*args, **kwargs)

    def _watched(self, group):
        add = group.add_argument

        def add_argument(*names, **options):
            self._yield_threads(names)
            return add(*names, **options)

        group.add_argument = add_argument
        return group

    def add_argument_group(self, *args, **kwargs):
        return self._watched(super().add_argument_group(*args, **kwargs))

    def add_mutually_exclusive_group(self, **kwargs):
        return self._watched(super().add_mutually_exclusive_group(**kwargs))

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if self._threads_action is not None and hasattr(namespace, self._threads_action.dest):
            from musicgen_lora.core.threads import apply_threads

            apply_threads(getattr(namespace, self._threads_action.dest))
        return namespace, extras

    def error(self, message):
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def number_type(kind, low=None, high=None, low_open=False, high_open=False, words=None):
    """A flag type: a finite `kind` (int or float) within [low, high] (open ends where asked).

    Accepts strings (command line) and numbers (YAML); argparse turns the ArgumentTypeError into
    `error: argument --flag: ...`.
    """
    if words is None:
        bounds = []
        if low is not None:
            bounds.append(f"{'>' if low_open else '>='} {low:g}")
        if high is not None:
            bounds.append(f"{'<' if high_open else '<='} {high:g}")
        words = ("a whole number" if kind is int else "a number") + (" " + " and ".join(bounds) if bounds else "")

    def parse(value):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value) if kind is float else int(value) if not isinstance(value, float) else value
            if kind is int and (isinstance(number, float) and not number.is_integer()):
                raise ValueError
            number = kind(number)
        except (TypeError, ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"{value!r} is not {words}") from None
        if kind is float and not math.isfinite(number):
            raise argparse.ArgumentTypeError(f"{value!r} is not {words}")
        if low is not None and (number < low or (low_open and number == low)):
            raise argparse.ArgumentTypeError(f"{value!r} is not {words}")
        if high is not None and (number > high or (high_open and number == high)):
            raise argparse.ArgumentTypeError(f"{value!r} is not {words}")
        return number

    parse.__name__ = kind.__name__  # what argparse and config files call the type
    return parse


positive_int = number_type(int, low=1)
nonneg_int = number_type(int, low=0)
any_int = number_type(int)
positive_float = number_type(float, low=0, low_open=True)
nonneg_float = number_type(float, low=0)
finite_float = number_type(float)
probability = number_type(float, low=0, high=1, words="a probability in [0, 1]")
dropout = number_type(float, low=0, high=1, high_open=True, words="a dropout probability in [0, 1)")
fraction = number_type(float, low=0, high=1, high_open=True, words="a fraction in [0, 1)")
positive_fraction = number_type(float, low=0, low_open=True, high=1, words="a fraction in (0, 1]")


def _convert(action: argparse.Action, key: str, value, path: Path):
    """One YAML value -> what argparse would have produced for the same flag on the command line."""
    where = f"{path}: key '{key}'"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if value is None:
        if action.default is not None:
            raise UserError(f"{where} cannot be null (its default is {action.default!r}); give a value or delete the "
                            f"line")
        return None
    if action.type is not None:
        if isinstance(value, (dict, list)):
            raise UserError(f"{where} must be a single value, got {value!r}")
        # PyYAML reads 1e-4 (no dot) as a string; the flag's own type gives the user's intent.
        try:
            value = action.type(value)
        except argparse.ArgumentTypeError as e:
            raise UserError(f"{where}: {e}") from None
        except (TypeError, ValueError):
            raise UserError(f"{where}: {value!r} is not a valid {getattr(action.type, '__name__', 'value')}") from None
    elif not isinstance(value, (str, int, float)):
        raise UserError(f"{where} must be a single value, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def load_config_file(path, parser: argparse.ArgumentParser) -> dict:
    """Read a YAML mapping of flag names to values, checked and typed against `parser`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pass --config an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not valid YAML ({first}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of flag names to values (key: value lines)")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions:
            raise UserError(f"{path}: unknown key '{key}'; valid keys are the flags of --help without the "
                            f"dashes (e.g. learning_rate)")
        values[dest] = _convert(actions[dest], str(key), value, path)
    return values


def negation_flag(option: str) -> str:
    """--fp16 -> --no_fp16; --no_cache -> --cache."""
    name = option.lstrip("-")
    return "--" + (name[3:] if name.startswith("no_") else f"no_{name}")


def add_negations(parser: argparse.ArgumentParser):
    """Give every on/off flag an opposite (--fp16 / --no_fp16), so a switch a config file turns on can
    be turned off again on the command line. The opposite has no default of its own: the flag's
    default (or the file's value) stands unless it is given."""
    taken = {opt for action in parser._actions for opt in action.option_strings}
    group = None
    for action in list(parser._actions):
        if not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            continue
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or negation_flag(long[0]) in taken or action.help == argparse.SUPPRESS:
            continue
        flag = negation_flag(long[0])
        group = group or parser.add_argument_group("opposites of the on/off flags")
        group.add_argument(flag, dest=action.dest, default=argparse.SUPPRESS,
                            action="store_false" if isinstance(action, argparse._StoreTrueAction) else "store_true",
                            help=f"Undo {long[0]} (when a --config file sets {action.dest}: true).")
        taken.add(flag)


def parse_args_with_config(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse argv where `--config FILE` (already defined on `parser`) supplies defaults.

    Precedence: the parser's defaults, then the file, then flags given on the command line; every
    on/off flag gets an opposite (add_negations) so the command line can undo the file either way.
    The returned namespace records the file's keys in `config_keys` for run_config.json.
    """
    add_negations(parser)
    pre = argparse.ArgumentParser(add_help=False)
    pre.error = parser.error
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    from_file = load_config_file(known.config, parser) if known.config else {}
    if from_file:
        parser.set_defaults(**from_file)
    args = parser.parse_args(argv)
    args.config_keys = sorted(from_file)
    return args


# --------------------------------------------------------------------------------------------
# Flag groups that several scripts share
# --------------------------------------------------------------------------------------------
def add_sampling_args(p: argparse.ArgumentParser):
    """The sampling and runtime flags inference_lora.py and evaluate.py share (same names and defaults)."""
    d = SamplingSettings()
    g = p.add_argument_group("sampling")
    g.add_argument("--duration", type=positive_float, default=15.0,
                   help="Seconds of audio per clip; longer than --window_seconds is generated window by window.")
    g.add_argument("--window_seconds", type=positive_float, default=None,
                   help=f"Seconds per generate() call (default {DEFAULT_WINDOW_S:g}, what MusicGen was trained on, or "
                        f"less when the model holds less). A longer --duration is continued window by window, each "
                        f"prompted with the end of the previous one (audiocraft's extend_stride).")
    g.add_argument("--window_overlap", type=positive_float, default=None,
                   help=f"Seconds of the previous window that prompt the next one (default "
                        f"{DEFAULT_OVERLAP_SHARE * 100:.0f}%% of the window: 12 s of 30, as audiocraft).")
    g.add_argument("--guidance_scale", type=nonneg_float, default=d.guidance_scale,
                   help="Classifier-free guidance scale (1 or less turns guidance off).")
    g.add_argument("--temperature", type=positive_float, default=d.temperature, help="Sampling temperature.")
    g.add_argument("--top_k", type=nonneg_int, default=d.top_k,
                   help="Sample from the k most likely codes (0 disables).")
    g.add_argument("--top_p", type=probability, default=d.top_p, help="Nucleus sampling mass (0 disables).")
    g.add_argument("--greedy", action="store_true", help="Argmax decoding instead of sampling (often loops).")
    g.add_argument("--seed", type=any_int, default=42,
                   help="Seed for every prompt (a prompt's own 'seed' in the prompts file wins); sample j of a "
                        "prompt uses seed + j.")
    g.add_argument("--batch_size", type=positive_int, default=8, help="Clips generated together in one batch.")
    g.add_argument("--wav_subtype", default="PCM_16", choices=WAV_SUBTYPES,
                   help="WAV sample format.")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda.")
    r.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="Generation precision. auto (default): bf16 on a GPU that has it (else fp16) and on a CPU "
                        "with bf16 instructions (avx512_bf16/amx_bf16; ~2x faster), else fp32. On a CPU only the "
                        "decoder's generation copy is bf16; held-out loss and FAD stay fp32.")
    r.add_argument("--fp16", action="store_true", help="Short for --precision fp16 (GPU only).")
    r.add_argument("--bf16", action="store_true", help="Short for --precision bf16.")
    r.add_argument("--overwrite", action="store_true",
                   help="Replace earlier outputs of this script in --output_dir instead of refusing (files it did "
                        "not write are never replaced).")
    r.add_argument("--no_progress", action="store_true", help="Hide progress bars.")


def check_runtime_flags(args):
    """The runtime group's own rule (add_sampling_args); train_lora.py's is TrainConfig.check."""
    args.precision = requested(args.precision, args.fp16, args.bf16, default="auto")


def window_plan(args) -> WindowPlan:
    """The parsed --window_seconds/--window_overlap (checked against the model by generation.check_duration)."""
    return WindowPlan(args.window_seconds, args.window_overlap)


def sampling_settings(args) -> SamplingSettings:
    """The parsed sampling flags as the library's settings, checked."""
    return SamplingSettings(args.guidance_scale, args.temperature, args.top_k, args.top_p, args.greedy).validate()
