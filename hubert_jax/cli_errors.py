"""How the commands end on an error: a user's mistake (a misspelt config field, a missing or unreadable file,
a value out of range, an incompatible checkpoint) is one clear message, `PROG: what is wrong`, and exit
status 1; anything else is a bug and keeps its traceback. `--debug` anywhere on the command line shows the
traceback of a user error too.

    sys.exit(run_command("train.py", lambda: app.run(main)))
"""

from __future__ import annotations

import errno
import sys

DEBUG_FLAG = "--debug"


def user_message(error: BaseException) -> str | None:
    """The message for a user's error, or None for a bug."""
    inner = error
    while inner.args and isinstance(inner.args[0], BaseException):  # AttributeError(KeyError(...))
        inner = inner.args[0]
    text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(error)
    if isinstance(error, (KeyError, AttributeError)) and "Did you mean" in text:
        # ml_collections' misspelt override: the key's repr and its hint in one escaped string
        key, _, hint = text.partition("\n")
        return f"unknown config field {key}: {hint.strip()}"
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return f"no space left on device: {error}"
    if isinstance(error, (ValueError, OSError)):
        return text
    # the package's own conditions of the run: CheckpointDamaged, NonFiniteLoss, CoordinatorUnreachable, ...
    if type(error).__module__.startswith("hubert_jax.") and isinstance(error, RuntimeError) and text.strip():
        return text
    return None


def prog_name(module_command: str) -> str:
    """The name a command's usage line shows: the installed command's (`hubert-jax-export`) when it was run as
    one, else how it is run from a clone (`python -m hubert_jax.export`)."""
    import os

    called = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return called if called.startswith("hubert-jax-") else module_command


def run_command(prog: str, fn, argv: list[str] | None = None) -> int:
    """fn()'s exit status; a user error printed as one message (status 1) unless --debug is given (it is
    taken off `argv`, so that the command's own parser never sees it)."""
    argv = sys.argv if argv is None else argv
    debug = DEBUG_FLAG in argv
    if debug:
        argv.remove(DEBUG_FLAG)
    try:
        status = fn()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 (sorted below: user errors are reported, bugs re-raised)
        message = None if debug else user_message(e)
        if message is None:
            raise
        sys.stdout.flush()
        sys.stderr.write(f"{prog}: {message}\n")
        sys.stderr.flush()
        return 1
    return status or 0
