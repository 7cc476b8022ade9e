"""The ``spice-migration-gateway`` command.

Exit codes, for every verb:

- 0: success;
- 2: refused: the input was refused (a ``GatewayError``), or the command line, a file it names
  or a socket it names cannot be used (usage errors, missing or unreadable files);
- 1: the operation ran and failed (``demo`` found a problem, a running proxy answered that a
  command failed), or an unexpected error.

Every error is one line on stderr. Refusals start with the error's class name; files and
sockets that cannot be used are named.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from gateway import __version__
from gateway.cli._io import UsageError
from gateway.errors import GatewayError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "HelpFormatter",
    "UsageError",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REFUSED = 2
#: Usage errors and unusable files share the refusal code, as argparse's convention has it.
EXIT_USAGE = EXIT_REFUSED

#: Each module contributes its verbs through ``add_parsers(subparsers)``.
_VERB_MODULES = ("codec", "demo", "keys", "envelope", "proxy", "libvirt")


class HelpFormatter(argparse.HelpFormatter):
    """A paragraph with line breaks keeps them, others are filled to the terminal's width;
    options with a default say what it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            if "\n" in paragraph.strip("\n"):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if shown and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 2 with argparse's message, as argparse and ``fuzz/run`` do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spice-migration-gateway",
        description=(
            "Validate, seal and open SPICE seamless-migration data.\n\n"
            "Exit codes: 0 success; 2 input refused, or a usage error, or a file that cannot\n"
            "be used (one stderr line); 1 the operation failed."
        ),
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


def _os_error(error: OSError, out: str | None) -> str:
    """``Class: FILE: reason`` for an OSError, naming the file when the error knows it.

    Output is written through a temporary file beside ``--out`` (``.NAME.*``); an error on
    that file is reported as one on ``--out``, the name the user gave.
    """
    reason = error.strerror or str(error) or "cannot be used"
    where = error.filename
    if where is not None and out is not None and out != "-":
        temporary, given = Path(os.fsdecode(where)), Path(out)
        if temporary.parent == given.parent and temporary.name.startswith(f".{given.name}."):
            where = out
    if where is None:
        return f"{type(error).__name__}: {reason}"
    return f"{type(error).__name__}: {where}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except GatewayError as error:
        message = " ".join(str(error).split()) or "refused"
        print(f"{type(error).__name__}: {message}", file=sys.stderr)
        return EXIT_REFUSED
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:  # a file or socket the user named
        print(_os_error(error, getattr(args, "out", None)), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as error:  # anything else is a failure of ours or of the environment
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return code


if __name__ == "__main__":
    sys.exit(main())
