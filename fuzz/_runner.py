"""fuzz/run: run the harnesses under libFuzzer, one process per core, and report.

    fuzz/run [HARNESS ...] [--time SECONDS] [--loop] [--keep-going] [--jobs N] [--merge-back]
    fuzz/run --smoke SECONDS [HARNESS ...]     each harness briefly (CI)
    fuzz/run --replay [HARNESS ...]            every committed corpus once (CI, seconds)
    fuzz/run --merge-back [HARNESS ...]        grown corpora into the committed ones
    fuzz/run --coverage [-v] [HARNESS ...]     branch coverage the corpus alone reaches
    fuzz/run --planted [BUG ...]               planted-bug self-check
    fuzz/run --startup [HARNESS ...]           start-up time of each harness
    fuzz/run --triage [HARNESS ...]            group saved crash inputs by what they raise
    fuzz/run --list

Harnesses are scheduled over --jobs worker slots (default: one per core). Crashes, hangs
and out-of-memory inputs go to fuzz/crashes/<harness>/, grown corpora to fuzz/out/corpus/,
libFuzzer's full output to fuzz/out/logs/. The exit status is 0 when nothing was found, 1 on
any finding (or a harness that would not run), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import IO

FUZZ_DIR = Path(__file__).resolve().parent
if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))

import _table  # noqa: E402

__all__ = ["Job", "main"]

LOG_DIR = _table.OUT_DIR / "logs"
_STATUS = re.compile(
    r"^#(?P<execs>\d+)\s+(?P<event>\w+)\s+cov: (?P<cov>\d+) ft: (?P<ft>\d+) "
    r"corp: (?P<corp>\d+)/\S+(?:.*?exec/s: (?P<rate>\d+))?"
)
#: The status line of -fork mode, which also counts what its jobs found.
_FORK_STATUS = re.compile(
    r"^#(?P<execs>\d+): cov: (?P<cov>\d+) ft: (?P<ft>\d+) corp: (?P<corp>\d+) "
    r"exec/s:? (?P<rate>\d+) oom/timeout/crash: (?P<found>[\d/]+)"
)
_ARTIFACT = re.compile(r"Test unit written to (?P<path>\S+)")
_FINAL = re.compile(r"^stat::(?P<name>\w+):\s+(?P<value>\d+)")


def _env() -> dict[str, str]:
    """The environment of a harness: this interpreter first on PATH, since libFuzzer re-runs a
    harness by its path (``-merge``, ``-fork``) and its shebang asks for ``python3``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SMG_FUZZ_INSTRUMENT", None)
    return env


@dataclass
class Job:
    """One libFuzzer process and what its output said."""

    harness: _table.Harness
    command: list[str]
    execs: int = 0
    rate: int = 0
    cov: int = 0
    features: int = 0
    corpus: int = 0
    artifacts: list[Path] = field(default_factory=list)
    returncode: int | None = None
    started: float = 0.0
    ended: float = 0.0
    tail: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    keep_going: bool = False

    @property
    def failed(self) -> bool:
        if self.keep_going:  # -fork mode exits non-zero after any crash it ignored
            return bool(self.artifacts) or self.returncode not in (0, 77, None)
        return bool(self.artifacts) or self.returncode not in (0, None)

    def run(self, log: IO[str]) -> None:
        folder = self.harness.crashes
        before = set(folder.iterdir()) if folder.is_dir() else set()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=_env(),
            cwd=_table.ROOT,
            start_new_session=True,  # Ctrl-C reaches the runner, which stops its own children
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            log.write(line)
            self._parse(line.rstrip("\n"))
        self.returncode = self.process.wait()
        self.ended = time.monotonic()
        if folder.is_dir():  # -fork mode writes its jobs' artifacts without saying so here
            found = sorted(set(folder.iterdir()) - before - set(self.artifacts))
            self.artifacts.extend(found)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # libFuzzer prints its stats and exits

    def _parse(self, line: str) -> None:
        if line.startswith("INFO: Instrumenting"):
            return
        self.tail = [*self.tail[-40:], line]
        if match := _FORK_STATUS.match(line):
            self.execs, self.rate = int(match["execs"]), int(match["rate"]) or self.rate
            self.cov, self.features = int(match["cov"]), int(match["ft"])
            self.corpus = int(match["corp"])
        elif match := _STATUS.match(line):
            self.execs = int(match["execs"])
            self.cov, self.features = int(match["cov"]), int(match["ft"])
            self.corpus = int(match["corp"])
            if match["rate"]:
                self.rate = int(match["rate"])
        elif match := _ARTIFACT.search(line):
            self.artifacts.append(Path(match["path"]))
        elif match := _FINAL.match(line):
            if match["name"] == "number_of_executed_units":
                self.execs = int(match["value"])
            elif match["name"] == "average_exec_per_sec":
                self.rate = int(match["value"])

    def line(self) -> str:
        crashes = len(self.artifacts)
        return f"{self.harness.name} {_si(self.rate)}/s cov {self.cov} corp {self.corpus}" + (
            f" FINDINGS {crashes}" if crashes else ""
        )


def _si(value: float) -> str:
    return f"{value / 1000:.1f}k" if value >= 1000 else f"{value:.0f}"


class Scheduler:
    """Runs jobs over worker slots with a live status line; collects the finished ones."""

    def __init__(self, jobs: int, *, quiet: bool = False) -> None:
        self.slots = max(1, jobs)
        self.queue: Queue[Job] = Queue()
        self.running: list[Job] = []
        self.done: list[Job] = []
        self.lock = threading.Lock()
        self.quiet = quiet
        self.interrupted = False
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def run(self, jobs: Sequence[Job]) -> list[Job]:
        for job in jobs:
            self.queue.put(job)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        workers = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.slots)]
        for worker in workers:
            worker.start()
        try:
            while any(w.is_alive() for w in workers):
                self._status()
                time.sleep(1.0)
        except KeyboardInterrupt:
            self.interrupted = True
            self._drain()
            with self.lock:
                for job in self.running:
                    job.stop()
            for worker in workers:
                worker.join()
        if self.tty and not self.quiet:
            sys.stderr.write("\r\033[K")
        return self.done

    def _drain(self) -> None:
        while True:
            try:
                self.queue.get_nowait()
            except Empty:
                return

    def _worker(self) -> None:
        while not self.interrupted:
            try:
                job = self.queue.get_nowait()
            except Empty:
                return
            with self.lock:
                self.running.append(job)
            with (LOG_DIR / f"{job.harness.name}.log").open("a") as log:
                job.run(log)
            with self.lock:
                self.running.remove(job)
                self.done.append(job)
            if not self.quiet:
                self._finished(job)

    _last_plain = 0.0

    def _status(self) -> None:
        if self.quiet:
            return
        with self.lock:
            parts = [job.line() for job in self.running]
        elapsed = time.monotonic() - self.start
        text = f"[{elapsed:5.0f}s] " + " | ".join(parts)
        if self.tty:
            width = shutil.get_terminal_size().columns
            sys.stderr.write("\r\033[K" + text[: width - 1])
            sys.stderr.flush()
        elif parts and time.monotonic() - self._last_plain >= 30:
            self._last_plain = time.monotonic()
            sys.stderr.write(text + "\n")

    def _finished(self, job: Job) -> None:
        verdict = "FINDING" if job.failed else "ok"
        text = (
            f"{job.harness.name:<28} {verdict:<8} {job.execs:>11,} execs "
            f"{_si(job.rate):>6}/s cov {job.cov:<5} corp {job.corpus:<5} "
            f"{job.ended - job.started:6.1f}s"
        )
        with self.lock:
            if self.tty:
                sys.stderr.write("\r\033[K")
            sys.stderr.write(text + "\n")
            for artifact in job.artifacts[:3]:
                sys.stderr.write(f"    {_show(artifact)}\n")
            if len(job.artifacts) > 3:
                sys.stderr.write(f"    ... and {len(job.artifacts) - 3} more\n")
            if job.failed and not job.artifacts:
                sys.stderr.write("    " + "\n    ".join(job.tail[-15:]) + "\n")


#: libFuzzer options that keep a run going past its findings (each one is still saved).
KEEP_GOING = ("-fork=1", "-ignore_crashes=1", "-ignore_timeouts=1", "-ignore_ooms=1")


def fuzz_job(harness: _table.Harness, seconds: int, extra: Sequence[str] = ()) -> Job:
    harness.grown.mkdir(parents=True, exist_ok=True)
    harness.crashes.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(harness.path),
        *harness.options(),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={harness.crashes}/",
        "-print_final_stats=1",
        *extra,
        str(harness.grown),
    ]
    if harness.seeds():
        command.append(str(harness.corpus))
    return Job(harness, command, keep_going=bool(set(extra) & set(KEEP_GOING)))


def replay_job(harness: _table.Harness) -> Job:
    harness.crashes.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(harness.path),
        *harness.options(),
        "-runs=0",
        f"-artifact_prefix={harness.crashes}/",
        str(harness.corpus),
    ]
    return Job(harness, command)


def merge_back(harnesses: Sequence[_table.Harness]) -> int:
    """Add the grown inputs that bring new coverage to the committed corpus (existing seeds,
    and their names, stay)."""
    failures = 0
    for harness in harnesses:
        if not harness.grown.is_dir() or not any(harness.grown.iterdir()):
            continue
        harness.corpus.mkdir(parents=True, exist_ok=True)
        before = len(harness.seeds())
        with tempfile.TemporaryDirectory() as tmp:
            result = subprocess.run(
                [
                    sys.executable,
                    str(harness.path),
                    "-merge=1",
                    *harness.options(),
                    f"-artifact_prefix={tmp}/",
                    str(harness.corpus),
                    str(harness.grown),
                ],
                env=_env(),
                cwd=_table.ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
        if result.returncode != 0:
            failures += 1
            print(f"{harness.name}: merge failed\n{result.stderr[-2000:]}", file=sys.stderr)
            continue
        print(f"{harness.name}: {before} -> {len(harness.seeds())} committed seeds")
    return failures


def startup(harnesses: Sequence[_table.Harness], repeat: int = 5) -> int:
    """Median wall and CPU time from process start to the first input run, per harness."""
    print(f"{'harness':<28} {'wall (median)':>14} {'cpu (median)':>13}")
    worst = 0.0
    for harness in harnesses:
        walls, cpus = [], []
        for _ in range(repeat):
            before = os.times()
            began = time.perf_counter()
            subprocess.run(
                [sys.executable, str(harness.path), "-runs=1"],
                env=_env(),
                cwd=_table.ROOT,
                capture_output=True,
                check=True,
            )
            walls.append(time.perf_counter() - began)
            after = os.times()
            cpus.append(
                after.children_user
                + after.children_system
                - before.children_user
                - before.children_system
            )
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        worst = max(worst, cpu)
        print(f"{harness.name:<28} {wall:>13.2f}s {cpu:>12.2f}s")
    return 0


def summarize(jobs: Sequence[Job]) -> int:
    findings = [job for job in jobs if job.failed]
    total = sum(job.execs for job in jobs)
    print(f"{len(jobs)} runs, {total:,} executions, {len(findings)} with findings")
    for job in findings:
        name = job.harness.name
        if not job.artifacts:
            print(f"  {name}: exited {job.returncode} (log: {_show(LOG_DIR / name)}.log)")
            continue
        print(f"  {name}: {len(job.artifacts)} input(s), e.g. {_show(job.artifacts[0])}")
        harness = f"{_show(Path(sys.executable))} {_show(job.harness.path)}"
        print(f"    reproduce: {harness} {_show(job.artifacts[0])}")
        print(f"    minimise:  {harness} -minimize_crash=1 -runs=10000 {_show(job.artifacts[0])}")
        print(f"    triage:    fuzz/run --triage {name}")
    return 1 if findings else 0


def _show(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (shorter, and portable)."""
    try:
        return str(path.relative_to(_table.ROOT))
    except ValueError:
        return str(path)


def _gist(message: str) -> str:
    """A message with its input-dependent parts (quoted text, numbers) blanked, so the inputs
    of one bug group together."""
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    return re.sub(r"\d+", "N", message)[:160]


def triage(harnesses: Sequence[_table.Harness]) -> int:
    """Replay every saved crash input in-process and group them by what they raise."""
    import traceback

    os.environ["SMG_FUZZ_INSTRUMENT"] = "0"
    count = 0
    for harness in harnesses:
        inputs = sorted(harness.crashes.iterdir()) if harness.crashes.is_dir() else []
        if not inputs:
            continue
        target = _table.load(harness).TestOneInput
        groups: dict[str, list[Path]] = {}
        for path in inputs:
            try:
                target(path.read_bytes())
            except Exception as error:
                frame = traceback.extract_tb(error.__traceback__)[-1]
                where = f"{_show(Path(frame.filename))}:{frame.lineno}"
                key = f"{type(error).__name__} at {where}: {_gist(str(error))}"
            else:
                key = "no longer fails (fixed, or a hang/out-of-memory input)"
            groups.setdefault(key, []).append(path)
        for key, paths in sorted(groups.items()):
            count += 1
            print(f"{harness.name}: {len(paths)} x {key}")
            smallest = min(paths, key=lambda p: p.stat().st_size)
            print(f"    smallest: {_show(smallest)} ({smallest.stat().st_size} bytes)")
    return 1 if count else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fuzz/run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("harnesses", nargs="*", metavar="HARNESS")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--replay", action="store_true", help="replay the committed corpora")
    mode.add_argument("--smoke", type=int, metavar="SECONDS", help="each harness briefly")
    mode.add_argument("--coverage", action="store_true", help="corpus-alone branch coverage")
    mode.add_argument("--planted", action="store_true", help="planted-bug self-check")
    mode.add_argument("--startup", action="store_true", help="measure start-up time")
    mode.add_argument("--list", action="store_true", help="list the harnesses and settings")
    mode.add_argument("--triage", action="store_true", help="group the saved crash inputs")
    parser.add_argument(
        "--time",
        type=int,
        metavar="SECONDS",
        help="fuzzing time per harness and round (default 600)",
    )
    parser.add_argument("--loop", action="store_true", help="repeat rounds until interrupted")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="harnesses run at once (default: one per core)",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="go on fuzzing after a finding (libFuzzer -fork=1 -ignore_*)",
    )
    parser.add_argument(
        "--merge-back",
        action="store_true",
        help="merge the grown corpora into the committed ones afterwards",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="with --coverage: list the lines and branches not reached",
    )
    args = parser.parse_args(argv)
    try:
        import atheris  # noqa: F401
    except ImportError:
        parser.exit(2, "fuzz/run: atheris is not installed (pip install -e '.[fuzz]')\n")
    if args.planted:
        import planted

        return planted.main(args.harnesses, jobs=args.jobs)
    try:
        harnesses = _table.discover(args.harnesses)
    except ValueError as error:
        parser.exit(2, f"fuzz/run: {error}\n")

    if args.list:
        for h in harnesses:
            print(f"{h.name:<28} max_len {h.max_len:>8}  seeds {len(h.seeds()):>4}  {h.path.name}")
        return 0
    if args.startup:
        return startup(harnesses)
    if args.triage:
        return triage(harnesses)
    if args.coverage:
        import _coverage

        return 1 if _coverage.report(harnesses, args.jobs, verbose=args.verbose) else 0
    if args.replay:
        missing = [h.name for h in harnesses if not h.seeds()]
        if missing:
            print(f"no committed seeds for: {', '.join(missing)}", file=sys.stderr)
        replays = Scheduler(args.jobs, quiet=True).run(
            [replay_job(h) for h in harnesses if h.seeds()]
        )
        for job in sorted(replays, key=lambda j: j.harness.name):
            verdict = "FINDING" if job.failed else "ok"
            print(
                f"{job.harness.name:<28} {verdict:<8} {len(job.harness.seeds()):>4} inputs "
                f"cov {job.cov}"
            )
        return max(summarize(replays), 1 if missing else 0)
    if args.merge_back and args.time is None and args.smoke is None and not args.loop:
        return 1 if merge_back(harnesses) else 0

    seconds = args.smoke if args.smoke is not None else args.time or 600
    jobs: list[Job] = []
    while True:
        scheduler = Scheduler(args.jobs)
        extra = KEEP_GOING if args.keep_going else ()
        jobs += scheduler.run([fuzz_job(h, seconds, extra) for h in harnesses])
        if not args.loop or scheduler.interrupted:
            break
    status = summarize(jobs)
    if args.merge_back:
        status = max(status, 1 if merge_back(harnesses) else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
