"""The continuous-fuzzing setup: ClusterFuzzLite's documented layout for a Python project, and
a build script that builds every harness (CI runs it through .ci/fuzz-build)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CFLITE = ROOT / ".clusterfuzzlite"
WORKFLOWS = ROOT / ".github" / "workflows"


def test_project_is_python() -> None:
    assert re.search(r"^language: python$", (CFLITE / "project.yaml").read_text(), re.M)


def test_dockerfile_builds_on_the_python_builder_with_the_build_script() -> None:
    lines = [
        line
        for line in (CFLITE / "Dockerfile").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "FROM gcr.io/oss-fuzz-base/base-builder-python"
    assert "COPY .clusterfuzzlite/build.sh $SRC/" in lines
    assert any(line.startswith("COPY . $SRC/") for line in lines)


def test_build_script_calls_the_projects_own() -> None:
    script = CFLITE / "build.sh"
    assert script.stat().st_mode & 0o111
    assert "fuzz/build.sh" in script.read_text()
    assert "compile_python_fuzzer" in (ROOT / "fuzz" / "build.sh").read_text()


def test_workflows_fuzz_pull_requests_and_batches() -> None:
    modes = {}
    for name in ("cflite_pr.yml", "cflite_batch.yml"):
        text = (WORKFLOWS / name).read_text()
        assert "google/clusterfuzzlite/actions/build_fuzzers@v1" in text
        assert "google/clusterfuzzlite/actions/run_fuzzers@v1" in text
        assert re.search(r"^\s+language: python$", text, re.M)
        mode = re.search(r"^\s+mode: (\S+)$", text, re.M)
        assert mode is not None
        modes[name] = mode.group(1)
    assert modes == {"cflite_pr.yml": "code-change", "cflite_batch.yml": "batch"}
    assert "pull_request:" in (WORKFLOWS / "cflite_pr.yml").read_text()
    assert "schedule:" in (WORKFLOWS / "cflite_batch.yml").read_text()


def test_ci_runs_the_build() -> None:
    assert "bash .ci/fuzz-build" in (ROOT / ".ci" / "run").read_text()
