"""The command line: a thin layer over the library. Each verb calls one library function;
tuning options and their defaults come from the settings dataclasses (the presets)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Sequence

from mbdefense.cli.commands import COMMANDS
from mbdefense.cli.parser import build_parser
from mbdefense.core.errors import MBDefenseError
from mbdefense.core.text import one_line

__all__ = ["COMMANDS", "build_parser", "main"]

#: An error is one line of at most this many characters (a hostile value is cut, not echoed).
MAX_ERROR_CHARS = 1000


def _quiet_libraries() -> None:
    """Keep the libraries' own progress bars and notices out of the command's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt   # SIGTERM ends a run like Ctrl-C: temporaries are removed


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE overrides may follow options of `run`
        if args.command != "run" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except MBDefenseError as exc:
        print(f"mbdefense: error: {one_line(exc, MAX_ERROR_CHARS)}", file=sys.stderr)
        return 2
    except OSError as exc:   # the file system's errors are the user's to fix: one line
        if isinstance(exc, BrokenPipeError):   # `| head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"mbdefense: error: {one_line(f'{where}{exc.strerror or exc}', MAX_ERROR_CHARS)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mbdefense: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
