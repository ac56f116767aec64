"""The wheel: users `import taskq`, and nothing installs a top-level `app`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(out),
            str(REPO),
        ],
        check=True,
        timeout=180,
    )
    (built,) = out.glob("taskq-*.whl")
    return zipfile.ZipFile(built)


def test_the_only_top_level_package_is_taskq(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"taskq"}


def test_the_wheel_carries_migrations_page_and_entry_point(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    shipped = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("taskq/migrations/"))
    in_repo = sorted(p.name for p in (REPO / "db" / "migrations").glob("*.sql"))
    assert shipped == in_repo
    assert "taskq/api/static/dashboard.html" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "taskq = taskq.cli:main" in wheel.read(entry_points).decode()


def test_public_surface() -> None:
    import taskq

    for name in ("enqueue", "enqueue_many", "TaskSpec", "handler", "NonRetryableError"):
        assert name in taskq.__all__
        assert getattr(taskq, name) is not None


def test_make_run_installs_only_the_runtime_and_the_embedded_server(tmp_path: Path) -> None:
    """`make run` from a fresh clone needs taskq and pgserver, not the development tools;
    `make test` keeps the full set."""
    fresh = f"VENV={tmp_path / 'venv'}"
    run = subprocess.run(
        ["make", "-n", "run", fresh], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "-e '.[embedded]'" in run
    assert ".[dev]" not in run
    test = subprocess.run(
        ["make", "-n", "test", fresh], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "-e '.[dev]'" in test
