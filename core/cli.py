"""Every stage's command line: `--config PROFILE --set a.b=c --sets "d.e=f g.h='i j'"`; one-line errors."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
import shlex
import sys
from collections.abc import Callable

from core.config import Config, load_config
from core.errors import UserError
from core.noise import silence_library_noise

DEFAULT_CONFIG = "configs/tiny.yaml"


def stage_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"run profile (default {DEFAULT_CONFIG})")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field; repeatable",
    )
    parser.add_argument(
        "--sets",
        dest="overrides",
        action=SplitOverrides,
        metavar="\"A.B=X C.D='Y Z'\"",
        help="overrides as one shell-quoted list (what make's SET= passes); applied in order with --set",
    )
    return parser


class SplitOverrides(argparse.Action):
    """Extends the overrides with a list split by POSIX shell rules: make passes SET as one argument, as
    typed, so that neither make nor a shell re-parses it, and a value may hold quoted spaces."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            overrides = shlex.split(values)
        except ValueError as error:
            raise UserError(
                f"bad override list {values!r} (SET= or --sets): {str(error).lower()}; "
                "quote a value with spaces as a shell does: a.b='x y'"
            ) from None
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), *overrides])


def run_stage(main: Callable[[Config, argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    """Parse the command line, load the config and run `main`; a UserError becomes one line and exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    silence_library_noise()
    try:
        args = parser.parse_args()  # --sets can raise a UserError
        config = load_config(args.config, args.overrides)
        main(config, args)
        # Done: what the stage imported (datasets and pandas, torch) is freed with the process, not first
        # visited by the interpreter's last collection of every object (0.2 s of `make data`'s exit).
        gc.freeze()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader of stdout stopped (`make inspect | head`): nothing more to show it, and no traceback
        # when Python flushes stdout on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as error:
        problem = storage_problem(error)
        if problem is None:
            raise  # a bug, not the user's doing: the traceback is for us
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)


# Errors of the machine's storage that a user fixes (space, permissions, a path that cannot be a folder).
STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENAMETOOLONG: "the name is too long",
}
# How libraries that write through their own I/O (safetensors, torch's zip writer) report a full disk.
DISK_FULL_MESSAGES = ("No space left on device", "StorageFull", "file write failed")


def storage_problem(error: BaseException) -> str | None:
    """One line for a storage failure (disk full, read-only, permissions, a file in the way), or None."""
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
        where = f" ({error.filename})" if error.filename else ""
        return (
            f"{STORAGE_ERRNOS[error.errno]}{where}: fix it and run the stage again; "
            "nothing was half-written and earlier results are intact"
        )
    if any(message in str(error) for message in DISK_FULL_MESSAGES):
        return "the disk is full: free some space and run the stage again; earlier results are intact"
    return None
