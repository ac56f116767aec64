"""The image test: build the Dockerfile, run migrate, API and worker, drive a task.

The Dockerfile is built with podman (+ runc) against a stand-in for the public
Python slim image (scripts/build-base-image.sh: debootstrap of bookworm with
python3 + python3-venv, cached). The containers run the way the manifests run
them: numeric non-root user, read-only root filesystem with a tmpfs /tmp, all
capabilities dropped, no privilege escalation, the password as PGPASSWORD and
DATABASE_URL without it. They share the host network (no registry, no bridge
networking here) and talk to the local PostgreSQL at 127.0.0.1:5432 in a
throwaway database that the test drops afterwards.

Where a registry is reachable (e.g. GitHub Actions), TASKQ_TEST_BASE_IMAGE
names a real base image to build on instead of the stand-in. TASKQ_TEST_IMAGE
names an image that was already built (the release workflow's verify job sets it
to the digest its build job pushed): the test pulls and runs that one instead of
building, so the image that gets signed and deployed is the image that was
tested.

Skipped, with the reason, only where podman is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gitops_policies import find, pod_template

from tests.gitops.gitops_support import REPO, run
from tests.helpers import skip_unless_ci

pytestmark = [pytest.mark.image, pytest.mark.timeout(1500)]

BASE_IMAGE = "localhost/taskq-base:bookworm-py311"
IMAGE = "localhost/taskq:gitops-test"
ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"


class Timer:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last = self.start

    def lap(self, what: str) -> None:
        now = time.monotonic()
        print(f"[image test] {what}: {now - self.last:.1f}s (total {now - self.start:.1f}s)")
        self.last = now


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll until predicate() is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def curl(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    cmd = ["curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", "-X", method]
    if body is not None:
        cmd += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    out = run([*cmd, url])
    if out.returncode != 0:
        return 0, out.stderr
    text, _, code = out.stdout.rpartition("\n")
    try:
        return int(code), json.loads(text) if text else None
    except json.JSONDecodeError:
        return int(code), text


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    out = run(["bash", str(REPO / "scripts" / "podman-setup.sh")])
    if out.returncode == 3:
        reason = f"podman is not installed here: {out.stderr.strip()}"
        print(f"[image test] SKIPPED: {reason}")
        skip_unless_ci(reason)
    assert out.returncode == 0, f"scripts/podman-setup.sh failed:\n{out.stderr}"
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


class Podman:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": env["CONTAINERS_CONF"]}
        self.runtime = env["TASKQ_PODMAN_RUNTIME"]
        self.ca_bundle = env.get("TASKQ_CA_BUNDLE", "")
        self.started: list[str] = []

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", "--runtime", self.runtime, *args],
            capture_output=True,
            text=True,
            check=False,
            env=self.env,
            timeout=timeout,
        )

    def restricted_run(self, name: str, env: dict[str, str], *args: str) -> list[str]:
        """`podman run` options mirroring the pods' securityContext."""
        opts = ["run", "--name", name, "--network=host", "--user", "10001:10001"]
        opts += ["--read-only", "--tmpfs", "/tmp:rw,size=64m", "--cap-drop", "ALL"]
        opts += ["--security-opt", "no-new-privileges"]
        for key, value in env.items():
            opts += ["--env", f"{key}={value}"]
        return [*opts, *args]


@pytest.fixture(scope="module")
def podman(podman_env: dict[str, str]) -> Iterator[Podman]:
    p = Podman(podman_env)
    yield p
    for name in p.started:
        p("rm", "-f", "-t", "0", name)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A throwaway database on the local server; dropped afterwards."""
    import psycopg

    name = f"taskq_image_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://root@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Run in the final image. pip, setuptools and wheel are absent from the app's venv and
# from the base interpreter the venv points at (the real slim base ships all three in
# its site-packages; the venv's python never imports from there, so it cannot tell);
# there is no pip command, no wheel a venv or ensurepip would reinstall pip from, and no
# compiler.
NO_BUILD_TOOLS = """
set -u
fail=0
IFS=:
for dir in $PATH; do
  for tool in "$dir"/pip "$dir"/pip3* "$dir"/wheel "$dir"/gcc "$dir"/cc; do
    if [ -e "$tool" ]; then echo "found $tool"; fail=1; fi
  done
done
unset IFS
base="$(readlink -f /opt/taskq/bin/python)"
for python in /opt/taskq/bin/python "$base"; do
  for module in pip setuptools wheel pkg_resources; do
    if "$python" -c "import $module" 2>/dev/null; then
      echo "$python imports $module"; fail=1
    fi
  done
done
wheels="$(find / -xdev -name '*.whl' \\( -name 'pip-*' -o -name 'setuptools-*' \\
          -o -name 'wheel-*' \\) 2>/dev/null)"
if [ -n "$wheels" ]; then echo "bundled wheels: $wheels"; fail=1; fi
exit "$fail"
"""


def probe_path(objs: list[dict[str, Any]], kind: str, name: str, probe: str) -> str:
    obj = find(objs, kind, name)
    assert obj is not None
    return str(pod_template(obj)["spec"]["containers"][0][probe]["httpGet"]["path"])


def test_image_runs_migrate_api_and_worker(
    podman: Podman, database: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    timer = Timer()
    image = IMAGE
    if prebuilt := os.environ.get("TASKQ_TEST_IMAGE", ""):
        if podman("image", "exists", prebuilt).returncode != 0:
            out = podman("pull", prebuilt, timeout=900)
            assert out.returncode == 0, f"podman pull {prebuilt}:\n{out.stderr[-4000:]}"
        image = prebuilt
        timer.lap(f"using {prebuilt}, not building")
    else:
        build_image(podman, timer)
    check_and_run_image(podman, image, database, rendered, timer)


def build_image(podman: Podman, timer: Timer) -> None:
    """Build the Dockerfile (with the lock, --require-hashes) as IMAGE."""
    base_image = os.environ.get("TASKQ_TEST_BASE_IMAGE", "")
    if not base_image:
        base_image = BASE_IMAGE
        out = run(["bash", str(REPO / "scripts" / "build-base-image.sh"), BASE_IMAGE])
        assert out.returncode == 0, f"base image:\n{out.stdout}\n{out.stderr}"
        timer.lap("stand-in base image (cached after the first run)")

    build = ["build", "--network=host", "--build-arg", f"BASE_IMAGE={base_image}"]
    if podman.ca_bundle:
        # pip in the builder stage must trust the same CAs as the host.
        build += ["-v", f"{podman.ca_bundle}:{podman.ca_bundle}:ro"]
        build += ["--build-arg", f"PIP_CERT={podman.ca_bundle}"]
    out = podman(*build, "--build-arg", "REVISION=gitops-test", "-t", IMAGE, str(REPO), timeout=900)
    assert out.returncode == 0, f"podman build failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    timer.lap("podman build")


def check_and_run_image(
    podman: Podman,
    image: str,
    database: str,
    rendered: dict[str, list[dict[str, Any]]],
    timer: Timer,
) -> None:
    """The image's configuration, no build tools inside, then migrate, API and worker
    driven the way the manifests run them."""

    inspect = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspect["Config"]
    print(f"[image test] image size {inspect['Size'] / 1e6:.0f} MB")
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["taskq"]
    assert {"8080/tcp", "8081/tcp"} <= set(config.get("ExposedPorts", {}))
    # The final stage carries the app's venv only: no pip, no compiler.
    out = podman("run", "--rm", "--entrypoint", "/bin/sh", image, "-c", NO_BUILD_TOOLS)
    assert out.returncode == 0, f"build tools in the final image: {out.stdout} {out.stderr}"

    api_port, health_port = free_port(), free_port()
    env = {
        "DATABASE_URL": database,
        # Trust auth ignores it, but this is the path the pods use.
        "PGPASSWORD": "unused-with-trust-auth",
        "TASKQ_API_BIND": f"127.0.0.1:{api_port}",
        "TASKQ_API_WORKERS": "2",
        "TASKQ_WORKER_HEALTH_BIND": f"127.0.0.1:{health_port}",
        "TASKQ_SHUTDOWN_TIMEOUT": "10",
        "TASKQ_WORKER_CONCURRENCY": "4",
    }
    suffix = uuid.uuid4().hex[:8]

    # Migrations: the hook Job's command, twice (hooks re-run on every sync).
    for attempt in (1, 2):
        name = f"taskq-migrate-{suffix}-{attempt}"
        podman.started.append(name)
        out = podman(
            *podman.restricted_run(name, env, image, "migrate", "--wait", "30"), timeout=120
        )
        assert out.returncode == 0, f"migrate #{attempt}:\n{out.stdout}\n{out.stderr}"
    timer.lap("migrate x2")

    api_name, worker_name = f"taskq-api-{suffix}", f"taskq-worker-{suffix}"
    for name, args in ((api_name, ["api"]), (worker_name, ["worker"])):
        podman.started.append(name)
        out = podman(*podman.restricted_run(name, env, "--detach", image, *args))
        assert out.returncode == 0, f"start {name}: {out.stderr}"

    dev = rendered["dev"]
    api = f"http://127.0.0.1:{api_port}"
    health = f"http://127.0.0.1:{health_port}"
    # The exact paths the manifests probe must answer 200 in the real image.
    probes = [
        (api, probe_path(dev, "Deployment", "taskq-api", p))
        for p in ("startupProbe", "readinessProbe", "livenessProbe")
    ] + [
        (health, probe_path(dev, "Deployment", "taskq-worker", p))
        for p in ("startupProbe", "readinessProbe", "livenessProbe")
    ]

    def logs() -> str:
        parts = []
        for n in (api_name, worker_name):
            out = podman("logs", "--tail", "40", n)
            parts.append(f"--- {n}\n{out.stdout}{out.stderr}")
        return "\n".join(parts)

    for base, path in probes:
        try:
            wait_for(
                f"{base}{path} to answer 200",
                lambda b=base, p=path: curl("GET", b + p)[0] == 200,
                60,
            )
        except pytest.fail.Exception:
            print(logs())
            raise
    timer.lap("api and worker ready")

    code, task = curl("POST", f"{api}/tasks", {"kind": "echo", "payload": {"from": "image-test"}})
    assert code == 201, (code, task)
    task_id = task["id"]

    def finished() -> dict[str, Any] | None:
        code, body = curl("GET", f"{api}/tasks/{task_id}")
        assert code == 200, (code, body)
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    try:
        final = wait_for(f"task {task_id} to finish", finished, 60, interval=0.2)
    except pytest.fail.Exception:
        print(logs())
        raise
    assert final["status"] == "succeeded", final
    timer.lap("task driven to succeeded through the API")

    # SIGTERM the worker: it must exit cleanly inside its shutdown timeout (+2 s),
    # which is what terminationGracePeriodSeconds relies on.
    started = time.monotonic()
    out = podman("stop", "--time", "30", worker_name, timeout=60)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    state = json.loads(podman("inspect", worker_name).stdout)[0]["State"]
    assert state["ExitCode"] == 0, (state, logs())
    assert took < 10 + 2 + 3, f"worker took {took:.1f}s to stop"
    timer.lap("worker graceful stop")

    with contextlib.suppress(Exception):
        podman("stop", "--time", "10", api_name, timeout=30)
    print(f"[image test] total {time.monotonic() - timer.start:.1f}s")


def test_stand_in_base_matches_the_pinned_default() -> None:
    """The stand-in mimics the default base: same Debian release, same Python minor."""
    text = (REPO / "Dockerfile").read_text()
    assert "python:3.11-slim-bookworm" in text
    assert "bookworm" in Path(REPO / "scripts" / "build-base-image.sh").read_text()
