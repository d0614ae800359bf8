"""YAML config files for the command-line scripts: parser defaults < --config FILE.yaml < command line.

Configs are data: a flat mapping of flag names (as in `--help`, without dashes) to values. Unknown
keys are an error naming the key and the file, so a typo never silently falls back to a default.
"""
import argparse
from pathlib import Path

from common import UserError


def _convert(action: argparse.Action, key: str, value, path: Path):
    """One YAML value -> what argparse would have produced for the same flag on the command line."""
    where = f"{path}: key '{key}'"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if value is None:
        return None
    if action.type is not None:
        if isinstance(value, (dict, list)):
            raise UserError(f"{where} must be a single value, got {value!r}")
        # PyYAML reads 1e-4 (no dot) as a string; the flag's own type gives the user's intent.
        if action.type is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise UserError(f"{where} must be a whole number, got {value!r}")
        try:
            value = action.type(value)
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
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    from_file = load_config_file(known.config, parser) if known.config else {}
    if from_file:
        parser.set_defaults(**from_file)
    args = parser.parse_args(argv)
    args.config_keys = sorted(from_file)
    return args
