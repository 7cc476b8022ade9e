"""The ``spice-migration-gateway`` command.

Exit codes, for every verb: 0 success; 2 input refused (a ``GatewayError``), reported as exactly
one stderr line that starts with the error's class name; 1 anything else (usage errors too).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from gateway import __version__
from gateway.errors import GatewayError

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_REFUSED", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REFUSED = 2

#: Each module contributes its verbs through ``add_parsers(subparsers)``.
_VERB_MODULES = ("codec", "demo", "keys", "envelope", "proxy", "libvirt")


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors; here 2 means "input refused", so usage exits 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_FAILURE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spice-migration-gateway",
        description="Validate, seal and open SPICE seamless-migration data.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    subparsers.required = True
    for name in _VERB_MODULES:
        try:
            module = importlib.import_module(f"gateway.cli.{name}")
        except ModuleNotFoundError as missing:
            if missing.name != f"gateway.cli.{name}":
                raise
            continue
        module.add_parsers(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except GatewayError as error:
        message = " ".join(str(error).split()) or "refused"
        print(f"{type(error).__name__}: {message}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as error:  # anything else is a failure of ours or of the environment
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return code


if __name__ == "__main__":
    sys.exit(main())
