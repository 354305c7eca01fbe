"""The command line every stage shares: `--config PROFILE --set a.b=c ...`, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from core.config import Config, load_config
from core.errors import UserError

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
    return parser


def run_stage(main: Callable[[Config, argparse.Namespace], None], parser: argparse.ArgumentParser) -> None:
    """Parse the command line, load the config and run `main`; a UserError becomes one line and exit 1."""
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_config(args.config, args.overrides)
        main(config, args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
