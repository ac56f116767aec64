"""Property-based fuzzing of the real API (gunicorn) with hypothesis: request bodies drawn
around the task model (right fields with wrong values, wrong fields, odd JSON), raw bytes,
query strings and ids. Whatever is sent, the answer is never a 5xx, every error has the
one JSON shape, and an accepted task reads back as sent. Bounded by example counts."""

from __future__ import annotations

import collections
import json
import math
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import Metrics
from tests.reliability.harness import Processes, Response, request

pytestmark = pytest.mark.reliability

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,  # nothing written to the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
STATUSES: collections.Counter[int] = collections.Counter()

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
names = st.one_of(
    st.sampled_from(["echo", "sleep", "fail", "record", "default", "q.1:a-b_c"]),
    st.from_regex(r"[A-Za-z0-9_.:-]{0,140}", fullmatch=True),
    any_text,
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)
    ),
    max_leaves=20,
)
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "now", ""]),
    any_text,
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "kind": st.one_of(st.sampled_from(["echo", "sleep", "fail"]), names, numbers, st.none()),
    "payload": st.one_of(st.dictionaries(any_text, json_values, max_size=5), json_values),
    "queue": st.one_of(names, numbers, st.none()),
    "priority": st.one_of(numbers, any_text, st.none()),
    "run_at": st.one_of(timestamps, numbers, st.none()),
    "delay": st.one_of(numbers, any_text, st.none()),
    "max_attempts": st.one_of(numbers, st.none()),
    "idempotency_key": st.one_of(any_text, numbers, st.none()),
}
task_bodies = st.one_of(
    st.fixed_dictionaries({}, optional=FIELDS),
    st.fixed_dictionaries({}, optional=FIELDS).flatmap(
        lambda body: st.dictionaries(any_text, json_values, max_size=2).map(
            lambda extra: {**extra, **body}
        )
    ),
)


def _encode(value: Any) -> bytes:
    # ensure_ascii sends lone surrogates as \ud800 escapes; allow_nan sends NaN/Infinity.
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def _check(resp: Response, what: str) -> None:
    STATUSES[resp.status] += 1
    assert resp.status < 500, f"{what} -> {resp.status} {resp.body[:300]!r}"
    if resp.status >= 400:
        assert resp.is_json_error, f"{what} -> {resp.status} {resp.body[:300]!r}"


def _same_json(sent: Any, stored: Any) -> bool:
    if isinstance(sent, float) and not isinstance(stored, bool):
        return isinstance(stored, int | float) and math.isclose(sent, stored, rel_tol=1e-12)
    if isinstance(sent, dict):
        return (
            isinstance(stored, dict)
            and sent.keys() == stored.keys()
            and all(_same_json(v, stored[k]) for k, v in sent.items())
        )
    if isinstance(sent, list):
        return (
            isinstance(stored, list)
            and len(sent) == len(stored)
            and all(_same_json(a, b) for a, b in zip(sent, stored, strict=True))
        )
    return bool(sent == stored and type(sent) is type(stored))


@FUZZ
@given(body=task_bodies)
def test_fuzzed_submissions(api_server: tuple[int, Processes], body: dict[str, Any]) -> None:
    port, _ = api_server
    resp = request(port, "POST", "/tasks", _encode(body))
    _check(resp, f"POST /tasks {body!r}")
    if resp.status == 201:
        task = request(port, "GET", resp.headers["location"]).json()
        assert task["status"] == "queued"
        assert _same_json(body.get("payload", {}), task["payload"])


@FUZZ
@given(tasks=st.lists(task_bodies, min_size=0, max_size=5), wrap=st.booleans())
def test_fuzzed_batches(
    api_server: tuple[int, Processes], tasks: list[dict[str, Any]], wrap: bool
) -> None:
    port, _ = api_server
    body = {"tasks": tasks} if wrap else tasks
    resp = request(port, "POST", "/tasks/batch", _encode(body))
    _check(resp, f"POST /tasks/batch {body!r}")
    if resp.status in (200, 201):
        assert len(resp.json()["tasks"]) == len(tasks)


@FUZZ
@given(
    raw=st.one_of(st.binary(max_size=300), json_values.map(_encode)),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=latin-1", "text/plain", None]
    ),
    path=st.sampled_from(["/tasks", "/tasks/batch"]),
)
def test_fuzzed_raw_bodies(
    api_server: tuple[int, Processes], raw: bytes, content_type: str | None, path: str
) -> None:
    port, _ = api_server
    resp = request(port, "POST", path, raw, content_type=content_type)
    _check(resp, f"POST {path} {raw!r} ({content_type})")


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["status", "queue", "kind", "limit", "cursor", "other"]),
        st.one_of(any_text, st.integers().map(str)),
        max_size=4,
    ),
    task_id=st.one_of(any_text, st.uuids().map(str)),
    action=st.sampled_from(["", "/cancel", "/retry"]),
)
def test_fuzzed_queries_and_ids(
    api_server: tuple[int, Processes], params: dict[str, str], task_id: str, action: str
) -> None:
    port, _ = api_server
    query = urllib.parse.urlencode(params, encoding="utf-8", errors="surrogatepass")
    _check(request(port, "GET", f"/tasks?{query}"), f"GET /tasks?{query}")
    quoted = urllib.parse.quote(task_id, safe="", errors="surrogatepass") or "x"
    method = "POST" if action else "GET"
    _check(request(port, method, f"/tasks/{quoted}{action}"), f"{method} /tasks/{quoted}{action}")


def test_fuzz_summary(api_server: tuple[int, Processes], metrics: Metrics) -> None:
    """Runs after the properties in this module: record what they sent and got."""
    _, procs = api_server
    assert "Traceback" not in procs.logs()
    metrics.record(
        "fuzz_hypothesis",
        examples_per_property=FUZZ.max_examples,
        responses=sum(STATUSES.values()),
        responses_by_status={str(k): v for k, v in sorted(STATUSES.items())},
        responses_5xx=sum(v for k, v in STATUSES.items() if k >= 500),
    )
