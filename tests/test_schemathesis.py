"""The API (the ASGI app `taskq api` serves) against its own OpenAPI document, with
schemathesis: generated requests (valid and invalid) for every operation, every built-in
check on. A document that allows what
the server refuses, or a response the document does not describe, fails the build.

Bounded: a fixed number of examples per operation, derandomized, so the run is repeatable
and takes well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import falcon
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from taskq import db
from taskq.api import Deps, create_app

from tests.worker_helpers import fresh_registry

EXAMPLES = 15

# Operations whose valid inputs JSON Schema cannot describe, left out of the positive run
# only (invalid inputs are still sent): a schedule's `cron` must be a valid cron
# expression, which a `string` schema cannot say.
NOT_EXPRESSIBLE = {"PUT /schedules/{name}"}

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    missing_required_header,
    unsupported_method,
    ignored_auth,
]


@pytest.fixture
def api_app(make_settings: Any) -> Iterator[falcon.App[Any, Any]]:
    settings = make_settings()
    pool = db.create_pool(settings, name="test")
    try:
        yield create_app(settings, Deps(pool=pool, registry=fresh_registry()))
    finally:
        pool.close()


def _follow_documented_rules(case: Any) -> None:
    """Rules the document states in words, which JSON Schema cannot express across a header
    and a body: the Idempotency-Key header and the body's idempotency_key agree when both
    are given (a request breaking that rule is invalid, and refused with 422)."""
    header = (case.headers or {}).get("Idempotency-Key")
    body = case.body
    if header is not None and isinstance(body, dict) and body.get("idempotency_key") is not None:
        body["idempotency_key"] = header
    # depends_on names existing tasks or refs of earlier tasks of the batch, and refs are
    # unique within a batch (the operations' descriptions say so): generated values
    # cannot know which tasks exist, so valid requests leave depends_on out and keep
    # the first use of each ref.
    tasks = body.get("tasks") if isinstance(body, dict) else None
    items = tasks if isinstance(tasks, list) else [body]
    seen: set[Any] = set()
    for item in items:
        if isinstance(item, dict):
            item.pop("depends_on", None)
            if item.get("ref") in seen:
                item.pop("ref")
            elif item.get("ref") is not None:
                seen.add(item["ref"])


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_does_what_its_document_says(
    api_app: falcon.App[Any, Any], mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    tested = 0
    for operation in operations:
        if (
            mode is GenerationMode.POSITIVE
            and f"{operation.method.upper()} {operation.path}" in NOT_EXPRESSIBLE
        ):
            continue

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            if mode is GenerationMode.POSITIVE:
                _follow_documented_rules(case)
            case.call_and_validate(checks=CHECKS)

        try:
            check()
        except Unsatisfiable:  # no input to make invalid (GET /live has no parameters)
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue
        tested += 1
    assert tested >= (10 if mode is GenerationMode.POSITIVE else 3)
