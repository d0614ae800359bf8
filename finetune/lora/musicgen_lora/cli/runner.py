"""How every script runs: a UserError is one `error:` line and exit 2, Ctrl-C and SIGTERM end with one
line (and how to go on), a full disk is one line whichever library raised it."""
import functools
import signal
import sys
import threading

from musicgen_lora.core.common import UserError, setup_logging
from musicgen_lora.core.outputs import disk_full_reason


class Interrupted(KeyboardInterrupt):
    """SIGTERM (a `kill`, a job scheduler, a container stop), handled exactly like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, _frame):
    raise Interrupted(signum)


def cli(main):
    """Run a script's main(): UserError -> one clear line on stderr and exit code 2, no traceback.

    Ctrl-C and SIGTERM end the same way: atomic writes in flight are rolled back by their own
    cleanup, one line says so (plus how to continue, when the script attached a `hint` to the
    exception), and the exit code is 128 + the signal number (130, 143), as a shell reports it.
    A write that failed because the disk is full is one line too, whichever library raised it.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        setup_logging()
        for stream in (sys.stdout, sys.stderr):  # file names that are not valid UTF-8 print, escaped
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        try:
            return main(argv) or 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", signal.SIGINT)
            hint = getattr(e, "hint", None)
            print(f"interrupted ({signal.Signals(signum).name})" + (f": {hint}" if hint else ""), file=sys.stderr)
            return 128 + signum
        except Exception as e:
            reason = disk_full_reason(e)
            if reason is None:
                raise
            where = getattr(e, "filename", None)
            print(f"error: {reason}" + (f" while writing {where}" if where else "") + "; free some space, then "
                  "run the same command again", file=sys.stderr)
            return 2

    return wrapper
