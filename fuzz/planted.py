#!/usr/bin/env python3
"""Planted-bug self-check: do the harnesses find classic decoder bugs, and how fast?

    fuzz/planted.py [BUG ...] [--time 60] [--jobs N] [--empty]      (or: fuzz/run --planted)

Each bug is re-created in a copy of one function, made at run time: the function's source is
read, one check is edited out, and the copy is compiled and swapped in, inside the fuzzing
process only. Nothing on disk changes. The harnesses then fuzz from their committed corpus
(``--empty``: from nothing) until the oracle fails or the time is up; a bug counts as found
when a harness writes a crash input within the time, and that input passes the unpatched code
(so what was found is the planted bug, not a real one).
"""

from __future__ import annotations
import __future__

import argparse
import ast
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FUZZ_DIR = Path(__file__).resolve().parent
if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))

import _table  # noqa: E402

__all__ = ["BUGS", "Bug", "main", "planted"]


@dataclass(frozen=True)
class Bug:
    name: str
    description: str
    module: str
    function: str
    """Dotted path of the function inside ``module`` (``Class.method`` for a method)."""
    edits: tuple[tuple[str, str], ...]
    """(text, replacement) pairs applied to the function's source; each text must occur."""
    harnesses: tuple[str, ...]


BUGS = (
    Bug(
        "offset-overlap",
        "offset bound check removed: a tail block may start inside the previous one",
        "gateway.native._layout",
        "Layout._decode_block",
        (("if ptr < cursor:", "if False:"),),
        ("native_smartcard_structured", "native_main_structured", "native_smartcard"),
    ),
    Bug(
        "count-wrap",
        "num_surfaces unbounded and count * entry size computed in 32 bits",
        "gateway.native.display",
        "SurfaceList.decode",
        (
            ("if count > NUM_SURFACES:", "if False:"),
            ("count * _LOSSLESS.size", "(count * _LOSSLESS.size) % 2**32"),
            ("count * _LOSSY.size", "(count * _LOSSY.size) % 2**32"),
        ),
        ("native_display_structured", "native_display"),
    ),
    Bug(
        "depth",
        "msgpack nesting depth bound removed in the envelope's payload layer",
        "gateway.envelope",
        "_check_depth",
        (("if depth > limit:", "if False:"),),
        ("envelope_payload", "envelope_open"),
    ),
    Bug(
        "bool-enum",
        "unchecked enum conversion: a bool field's byte taken as 'is it 1' without a range check",
        "gateway.native._layout",
        "Layout.decode",
        (("if value not in (0, 1):", "if False:"),),
        ("native_display", "native_display_structured", "native_smartcard_structured"),
    ),
    Bug(
        "size-limit",
        "maximum payload size check removed",
        "gateway.native._layout",
        "Layout.decode",
        (("if size > self.max_size:", "if False:"),),
        ("native_inputs", "native_main_structured"),
    ),
    Bug(
        "unopened-data",
        "proxy logic: a client's MIGRATE_DATA forwarded unopened while its session is not pinned",
        "gateway.proxy.channel",
        "ChannelHandler.rewrite",
        (
            (
                "try:\n            session, verified = self._verify(migration.payload)",
                "if self.session is not None and self.session.migration_id is None:\n"
                "            return event.raw\n"
                "        try:\n"
                "            session, verified = self._verify(migration.payload)",
            ),
        ),
        ("proxy_pair",),
    ),
)


def planted(bug: Bug, instrument: Callable[[Any], Any] | None = None) -> Callable[[], None]:
    """Swap in the buggy copy of ``bug.function``; returns the function that swaps it back."""
    module = importlib.import_module(bug.module)
    *owners, name = bug.function.split(".")
    owner: Any = module
    for part in owners:
        owner = getattr(owner, part)
    original = owner.__dict__[name]
    lines, first = inspect.getsourcelines(original)
    source = textwrap.dedent("".join(lines))
    for text, replacement in bug.edits:
        if text not in source:
            raise RuntimeError(f"{bug.name}: {bug.function} no longer contains {text!r}")
        source = source.replace(text, replacement)
    tree = ast.parse(source)
    ast.increment_lineno(tree, first - 1)
    namespace: dict[str, Any] = {}
    # Compiled as its module was (postponed annotations), with the module's globals.
    code = compile(
        tree,
        inspect.getfile(original),
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    exec(code, original.__globals__, namespace)
    copy = namespace[name]
    copy.__qualname__, copy.__module__ = original.__qualname__, original.__module__
    if instrument is not None:
        copy = instrument(copy)
    setattr(owner, name, copy)
    return lambda: setattr(owner, name, original)


# --- the fuzzing child -----------------------------------------------------------------------


def child(bug_name: str, harness_name: str, libfuzzer_args: list[str]) -> None:
    """Fuzz one harness with one bug planted (runs in its own process)."""
    import atheris

    (harness,) = _table.discover([harness_name])
    module = _table.load(harness)  # instrumented as the harness's own imports are
    planted(_bug(bug_name), atheris.instrument_func)
    mutator = getattr(module, "CustomMutator", None)
    argv = [str(harness.path), *libfuzzer_args]
    if mutator is None:
        atheris.Setup(argv, module.TestOneInput)
    else:
        atheris.Setup(argv, module.TestOneInput, custom_mutator=mutator)
    atheris.Fuzz()


def _bug(name: str) -> Bug:
    for bug in BUGS:
        if bug.name == name:
            return bug
    raise SystemExit(f"no planted bug {name!r}; one of: {', '.join(b.name for b in BUGS)}")


# --- the parent ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    bug: Bug
    harness: str
    seconds: float | None
    artifact: Path | None
    genuine: bool
    """The artifact passes the unpatched code (so it is the planted bug that was found)."""


_ARTIFACT = re.compile(r"Test unit written to (?P<path>\S+)")


def hunt(bug: Bug, harness: _table.Harness, seconds: int, empty: bool, out: Path) -> Result:
    work = out / f"{bug.name}-{harness.name}"
    (work / "corpus").mkdir(parents=True)
    command = [
        sys.executable,
        __file__,
        "--child",
        bug.name,
        harness.name,
        *harness.options(),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={work}/",
        str(work / "corpus"),
    ]
    if not empty and harness.seeds():
        command.append(str(harness.corpus))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("SMG_FUZZ_INSTRUMENT", None)
    began = time.monotonic()
    found: float | None = None
    artifact: Path | None = None
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
    ) as process:
        assert process.stdout is not None
        with (work / "log").open("w") as log:
            for line in process.stdout:
                log.write(line)
                if found is None and (match := _ARTIFACT.search(line)):
                    found, artifact = time.monotonic() - began, Path(match["path"])
    genuine = artifact is not None and _passes_unpatched(harness, artifact)
    return Result(bug, harness.name, found, artifact, genuine)


def _passes_unpatched(harness: _table.Harness, artifact: Path) -> bool:
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); import _table; "
            "(h,) = _table.discover([sys.argv[2]]); "
            "_table.load(h).TestOneInput(open(sys.argv[3], 'rb').read())",
            str(FUZZ_DIR),
            harness.name,
            str(artifact),
        ],
        env=dict(os.environ, SMG_FUZZ_INSTRUMENT="0"),
        capture_output=True,
        check=False,
    )
    return check.returncode == 0


def main(
    names: Sequence[str] = (), *, jobs: int = 2, seconds: int = 60, empty: bool = False
) -> int:
    bugs = [_bug(n) for n in names] if names else list(BUGS)
    out = Path(tempfile.mkdtemp(prefix="planted-"))
    pairs = [(bug, h) for bug in bugs for h in _table.discover(bug.harnesses)]
    started = f"{len(pairs)} runs of up to {seconds} s over {jobs} slots"
    print(f"planted-bug self-check: {len(bugs)} bugs, {started}", flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(lambda p: hunt(p[0], p[1], seconds, empty, out), pairs))
    found = 0
    for bug in bugs:
        print(f"\n{bug.name}: {bug.description}")
        hits = [r for r in results if r.bug is bug]
        for r in hits:
            if r.seconds is None:
                print(f"    {r.harness:<30} not found in {seconds} s")
            else:
                verdict = "" if r.genuine else "  (input also fails unpatched code!)"
                print(f"    {r.harness:<30} found in {r.seconds:5.1f} s{verdict}")
        if any(r.seconds is not None and r.genuine for r in hits):
            found += 1
    print(f"\n{found} of {len(bugs)} planted bugs found within {seconds} s")
    shutil.rmtree(out, ignore_errors=True)
    return 0 if found == len(bugs) else 1


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "bugs",
        nargs="*",
        metavar="BUG",
        help=f"one of {', '.join(b.name for b in BUGS)} (default: all)",
    )
    parser.add_argument("--time", type=int, default=60, help="seconds per run (default 60)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--empty", action="store_true", help="start from an empty corpus")
    args = parser.parse_args()
    sys.exit(main(args.bugs, jobs=args.jobs, seconds=args.time, empty=args.empty))
