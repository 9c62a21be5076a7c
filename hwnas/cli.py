"""The `hwnas` command: one small module per group of verbs in `hwnas.commands`, each calling
one library function. Errors a user can fix are printed as one line, with a non-zero exit."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Sequence

from profiler.errors import HwnasError

#: command modules; each defines register(subparsers) and sets `func` on its parsers
COMMAND_MODULES = ("hwnas.commands.profile", "hwnas.commands.search", "hwnas.commands.predict", "hwnas.commands.run")


class UserError(HwnasError):
    """An error the user can fix; printed as one line."""


def check_out_file(path: str, example: str, option: str = "--out") -> Path:
    """Refuse, before any work, an output file that cannot be written: an existing folder, a path under
    a file, a read-only file, or a folder this user may not write in. Missing parent folders are fine
    (the writer creates them once there is something to write). ``example`` is a file name to suggest
    when ``path`` is a folder.

    Raises:
        UserError: naming the option, the path and what to do.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option} {path}: is a folder; name a file in it, e.g. {p / example}")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{option} {path}: the file is read-only; choose another path or make it writable")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:  # the nearest folder that exists
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {parent} (permission denied); choose another path")
    return p


def write_error(path: str, e: OSError, option: str = "--out") -> UserError:
    """A failed write of an output file (disk full, a race with the checks above) as one line."""
    return UserError(f"{option} {path}: cannot write it ({e.strerror or e}); choose another path")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hwnas",
        description="On-device latency profiling and hardware-aware neural architecture search.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    from hwnas import __version__

    p.add_argument("--version", action="version", version=f"hwnas {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    # every error raised on purpose derives from HwnasError; a missing file named by the user is one too
    return (HwnasError, FileNotFoundError)


#: what an interrupt leaves behind, per command
_INTERRUPTED = {
    "profile": "every measurement taken so far is stored; run the same command to resume",
    "search": "the last epoch's checkpoint is in the run folder; add --resume to go on from it",
    "train": "training keeps no checkpoint yet; run the same command to start it again",
    "run": "finished stages are kept in the run folder; run the same command to resume",
}


def _quiet_library_warnings() -> None:
    """Compilers' deprecation notices (torch.export, ExecuTorch, TVM) say nothing a user can act on;
    keep them out of the output, here and in the worker processes."""
    import os
    import warnings

    import logging

    for cat in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=cat)
    # torchao (pulled in by ExecuTorch's export) logs each CUDA kernel library it cannot load on a
    # CPU machine; torch's pytree logs a deprecation of its own API
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_library_warnings()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # the reader went away (`hwnas spaces --keys | head -1`): nothing to say, and nobody to say it to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        left = _INTERRUPTED.get(args.command, "nothing was half-written")
        print(f"hwnas {args.command}: interrupted; {left}", file=sys.stderr)
        return 130
    except _user_errors() as e:
        print(f"hwnas {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m hwnas.cli` runs this file as __main__, and the commands import hwnas.cli again: use
    # that module's main, so that the UserError the commands raise is the one it catches
    from hwnas.cli import main as _main

    raise SystemExit(_main())
