"""The harnesses and their settings: every ``fuzz/<name>_fuzzer.py``, with its row of
harnesses.toml. A harness is known by ``<name>`` (the decoder it fuzzes): its corpus is
``corpus/<name>/`` and its dictionary ``dict/<name>.dict``.

Shared by the runner, the corpus generator, the build script and the tests, so that a harness
is found, sized and measured the same way everywhere. Imports nothing of the project.
"""

from __future__ import annotations

import importlib
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "CORPUS_DIR",
    "CRASH_DIR",
    "DICT_DIR",
    "FUZZ_DIR",
    "OUT_DIR",
    "ROOT",
    "TABLE",
    "Harness",
    "discover",
    "load",
]

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
TABLE = FUZZ_DIR / "harnesses.toml"
CORPUS_DIR = FUZZ_DIR / "corpus"
DICT_DIR = FUZZ_DIR / "dict"
#: Grown corpora and logs of local runs; not committed.
OUT_DIR = FUZZ_DIR / "out"
#: Crashing, hanging and out-of-memory inputs; not committed.
CRASH_DIR = FUZZ_DIR / "crashes"

_KEYS = {"max_len", "timeout", "rss_limit_mb", "covers", "shares"}


@dataclass(frozen=True)
class Harness:
    name: str
    """The decoder's name, e.g. ``native_display``; the file is ``<name>_fuzzer.py``."""
    path: Path
    max_len: int
    timeout: int
    rss_limit_mb: int
    covers: tuple[str, ...] = ()
    shares: tuple[str, ...] = ()

    @property
    def corpus(self) -> Path:
        return CORPUS_DIR / self.name

    @property
    def dictionary(self) -> Path:
        return DICT_DIR / f"{self.name}.dict"

    @property
    def grown(self) -> Path:
        return OUT_DIR / "corpus" / self.name

    @property
    def crashes(self) -> Path:
        return CRASH_DIR / self.name

    def options(self) -> list[str]:
        """libFuzzer options from the table (and the dictionary, when there is one)."""
        options = [
            f"-max_len={self.max_len}",
            f"-timeout={self.timeout}",
            f"-rss_limit_mb={self.rss_limit_mb}",
        ]
        if self.dictionary.is_file():
            options.append(f"-dict={self.dictionary}")
        return options

    @property
    def module(self) -> str:
        return self.path.stem

    def seeds(self) -> list[Path]:
        """The committed corpus, in a stable order."""
        if not self.corpus.is_dir():
            return []
        return sorted(p for p in self.corpus.iterdir() if p.is_file())


def _load() -> dict[str, dict[str, Any]]:
    with TABLE.open("rb") as handle:
        table = tomllib.load(handle)
    for name, row in table.items():
        if unknown := set(row) - _KEYS:
            raise ValueError(f"{TABLE.name}: [{name}] has unknown key(s) {sorted(unknown)}")
    return table


def discover(names: Iterable[str] = ()) -> list[Harness]:
    """The harnesses named (all of them when none is), sorted by name.

    A name may also be given as the file name or path, with or without ``_fuzzer.py``.
    """
    table = _load()
    defaults = table.pop("defaults", {})
    found = {p.stem.removesuffix("_fuzzer"): p for p in sorted(FUZZ_DIR.glob("*_fuzzer.py"))}
    if stale := sorted(set(table) - set(found)):
        raise ValueError(f"{TABLE.name}: rows for missing harnesses: {', '.join(stale)}")
    harnesses = {}
    for raw in list(names) or list(found):
        name = Path(raw).name.removesuffix(".py").removesuffix("_fuzzer")
        if name not in found:
            raise ValueError(f"no harness {raw!r}; one of: {', '.join(found)}")
        row = {**defaults, **table.get(name, {})}
        harnesses[name] = Harness(
            name=name,
            path=found[name],
            max_len=int(row["max_len"]),
            timeout=int(row["timeout"]),
            rss_limit_mb=int(row["rss_limit_mb"]),
            covers=tuple(row.get("covers", ())),
            shares=tuple(row.get("shares", ())),
        )
    return [harnesses[name] for name in sorted(harnesses)]


def load(harness: Harness) -> ModuleType:
    """Import a harness as a module (``TestOneInput`` and friends), fuzz/ on the path."""
    if str(FUZZ_DIR) not in sys.path:
        sys.path.insert(0, str(FUZZ_DIR))
    return importlib.import_module(harness.module)


if __name__ == "__main__":
    # One line per harness for shell scripts (build.sh): name, file, max_len, timeout, rss.
    for h in discover(sys.argv[1:]):
        print(h.name, h.path.name, h.max_len, h.timeout, h.rss_limit_mb)
