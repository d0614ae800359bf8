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
import os
import sys
from dataclasses import fields
from pathlib import Path

from musicgen_lora.core.common import UserError
from musicgen_lora.core.config import (  # noqa: F401 (the flag types, re-exported for the scripts)
    any_int,
    default_of,
    dropout,
    finite_float,
    flag_fields,
    fraction,
    nonneg_float,
    nonneg_int,
    number_type,
    positive_float,
    positive_fraction,
    positive_int,
    probability,
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


THREADS_HELP = ("CPU threads for torch, at most the CPUs this process may use (default: all of them, whatever "
                "else is running; OMP_NUM_THREADS wins when set; a resumed training reuses its run's). Results "
                "can differ slightly between thread counts.")


class Parser(argparse.ArgumentParser):
    """argparse with one `error: ...` line for a bad flag (no usage dump) and defaults in --help.

    Every script also gets `--threads N` (threads.py): applied right after parsing, before torch is
    imported. A script that defines its own --threads keeps it (and its meaning): the shared flag
    steps aside. threads_flag=False (or add_help=False, a parent parser) leaves it out.
    """

    def __init__(self, *args, threads_flag: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # --learning_rat must not pass for --learning_rate
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
        sys.stderr.write(f"error: {message}{self._did_you_mean(message)} (see {self.prog} --help)\n")
        sys.exit(2)

    def _did_you_mean(self, message: str) -> str:
        """'; did you mean --model_path?' for an unknown flag close to a real one (--model-path,
        --learnig_rate): abbreviations are off (allow_abbrev=False: --learning_rat would otherwise be
        taken as --learning_rate silently), so a near miss gets a name instead."""
        import difflib

        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [o for o in self._option_string_actions if o.startswith("--")]
        hints = []
        for word in message.split(":", 1)[1].split():
            flag = word.split("=", 1)[0]
            if not flag.startswith("--"):
                continue
            close = difflib.get_close_matches(flag.replace("-", "_").replace("__", "--", 1), known, n=1, cutoff=0.75)
            if close:
                hints.append(f"{flag} -> {close[0]}")
        return f"; did you mean {', '.join(hints)}?" if hints else ""


def add_settings(parser: argparse.ArgumentParser, cls, skip=()) -> argparse.ArgumentParser:
    """One flag per `setting` field of the config class `cls` (core/config.py), in argument groups by
    the fields' `group`, in field order: help, type, default, choices and other spellings all come
    from the field. Fields named in `skip` are left to the caller."""
    groups = {}
    for f in flag_fields(cls):
        if f.name in skip:
            continue
        m = f.metadata
        if m["group"] and m["group"] not in groups:
            groups[m["group"]] = parser.add_argument_group(m["group"])
        target = groups.get(m["group"], parser)
        default = default_of(f)
        if isinstance(default, str) and default.startswith("../"):
            default = DefaultFolder(default)  # settings_from tells it from the same path typed
        kwargs = {"dest": f.name, "default": default, "help": m["help"]}
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
        else:
            kwargs.update({k: m[k] for k in ("type", "choices", "metavar", "action") if m.get(k) is not None})
            if (isinstance(default, list) or m["nargs"]) and not m.get("action"):
                kwargs["nargs"] = m["nargs"] or "+"
        target.add_argument(f"--{f.name}", *m["aliases"], **kwargs)
    return parser


def settings_from(cls, args: argparse.Namespace):
    """The parsed flags as the config class `cls` (its fields are the flags), checked by its check()
    when it has one. Default folders ("../data", "../output") are relative to finetune/lora, where the
    documents run the scripts, whichever folder a script is started from (scripts_folder)."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    anchor = scripts_folder()
    for name, value in values.items():
        if isinstance(value, DefaultFolder):  # not given: the default, anchored where the docs run scripts
            values[name] = os.path.normpath(anchor / value) if anchor is not None else str(value)
    cfg = cls(**values)
    return cfg.check() if hasattr(cfg, "check") else cfg


class DefaultFolder(str):
    """A default folder of a flag ("../output"): a str to argparse and --help, and a mark that the flag
    was not given (a path typed, or read from a --config file, is a plain str)."""


def scripts_folder() -> Path | None:
    """finetune/lora when the running script is one of its scripts (python finetune/lora/train_lora.py from
    the repository root sent a run to ../output, outside the checkout); None for other entry points
    (console commands, python -m): their defaults stay relative to the working folder."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is None or script.suffix != ".py" or not script.is_file():
        return None
    folder = script.resolve().parent
    return folder if folder.name == "lora" and folder.parent.name == "finetune" else None


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
