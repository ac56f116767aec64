"""/openapi.json: a valid OpenAPI 3.1 document that matches the app.

Fails when a route of the Falcon app is undocumented, when a documented route does not
exist, or when a real response (status, content type or body) does not match what the
document says.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import falcon
import falcon.testing
import jsonschema
import psycopg
import pytest
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from taskq import db
from taskq.api import Deps, create_app, openapi
from taskq.api.asgi import on_loop
from taskq.settings import Settings

from tests.helpers import free_port
from tests.worker_helpers import fresh_registry

Client = falcon.testing.TestClient
JSON = {"content-type": "application/json"}
DOC_URI = "urn:taskq:openapi"


@pytest.fixture
def make_app(
    make_settings: Callable[..., Settings],
) -> Iterator[Callable[..., falcon.App[Any, Any]]]:
    pools: list[Any] = []

    def make(**overrides: Any) -> falcon.App[Any, Any]:
        settings = make_settings(**overrides)
        pool = db.create_pool(settings, name="test")
        pools.append(pool)
        return create_app(settings, Deps(pool=pool, registry=fresh_registry()))

    yield make
    for pool in pools:
        pool.close()


@pytest.fixture
def app(make_app: Callable[..., falcon.App[Any, Any]]) -> falcon.App[Any, Any]:
    return make_app()


def document(app: falcon.App[Any, Any]) -> dict[str, Any]:
    result = falcon.testing.TestClient(app).simulate_get("/openapi.json")
    assert result.status_code == 200
    doc: dict[str, Any] = result.json
    return doc


class Checker:
    """Validates real responses against the document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        registry: Registry[Any] = Registry().with_resource(
            DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012)
        )
        self.registry = registry
        self.templates = [
            (re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", path) + "$"), path)
            for path in doc["paths"]
        ]
        self.seen: set[tuple[str, str, int]] = set()

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for pattern, template in self.templates:
            if pattern.match(path) and method.lower() in self.doc["paths"][template]:
                return template, self.doc["paths"][template][method.lower()]
        raise AssertionError(f"{method} {path} matches no documented operation")

    def validate_schema(self, instance: Any, pointer: str) -> None:
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"{DOC_URI}#{pointer}"},
            registry=self.registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
        assert not errors, f"{pointer}: " + "; ".join(
            f"{list(e.path)}: {e.message}" for e in errors[:5]
        )

    def check(self, method: str, path: str, result: falcon.testing.Result) -> None:
        template, op = self.operation(method, path.split("?")[0])
        status = str(result.status_code)
        assert status in op["responses"], (
            f"{method} {path} answered {status}, documented: {sorted(op['responses'])}"
        )
        documented = op["responses"][status]
        for header in documented.get("headers", {}):
            assert header.lower() in {h.lower() for h in result.headers}, (
                f"{method} {path} {status}: documented header {header} missing"
            )
        if "content" not in documented:  # a response without a body (204)
            assert not result.content, f"{method} {path} {status}: unexpected body"
            self.seen.add((method, template, result.status_code))
            return
        (content_type, media), = documented["content"].items()  # fmt: skip
        got = (result.headers.get("content-type") or "").split(";")[0]
        assert got == content_type, f"{method} {path} {status}: {got} != {content_type}"
        if content_type == "application/json":
            ref = media["schema"]["$ref"].removeprefix("#")
            self.validate_schema(result.json, ref)
        self.seen.add((method, template, result.status_code))


def _post(client: Client, path: str, body: Any, **headers: str) -> falcon.testing.Result:
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.simulate_post(path, body=raw, headers={**JSON, **headers})


# ---------------------------------------------------------------- the document itself


def test_document_is_valid_openapi_3_1(app: falcon.App[Any, Any]) -> None:
    doc = document(app)
    assert doc["openapi"].startswith("3.1.")
    validate_spec(doc)  # raises with the first problem
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_every_route_is_documented_and_every_documented_route_is_served(
    app: falcon.App[Any, Any],
) -> None:
    assert openapi.undocumented(app) == set()
    assert openapi.unserved(app) == set()
    doc = document(app)
    in_doc = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert in_doc == openapi.routes(app)


def test_the_route_checks_catch_drift(
    app: falcon.App[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Extra:
        def on_delete(self, req: falcon.Request, resp: falcon.Response) -> None:
            """An endpoint somebody forgot to document."""

    app.add_route("/tasks/{task_id:uuid}/extra", on_loop(Extra(), max_body_bytes=1024))
    assert openapi.undocumented(app) == {("DELETE", "/tasks/{task_id}/extra")}
    fake = openapi.Operation("gone", {200: openapi.Response("ok")})
    monkeypatch.setitem(openapi.OPERATIONS, ("GET", "/nowhere"), fake)
    assert ("GET", "/nowhere") in openapi.unserved(app)


def test_schemas_come_from_the_models(app: falcon.App[Any, Any]) -> None:
    schemas = document(app)["components"]["schemas"]
    from taskq.models import TaskSpec

    assert set(schemas["TaskSpec"]["properties"]) == set(TaskSpec.model_fields)
    assert schemas["TaskSpec"]["additionalProperties"] is False
    import dataclasses

    from taskq.models import Task

    fields = {f.name for f in dataclasses.fields(Task)} - {"created"}
    assert set(schemas["Task"]["properties"]) == fields
    assert set(schemas["Task"]["required"]) == fields


def test_the_checker_rejects_a_response_that_drifted(app: falcon.App[Any, Any]) -> None:
    checker = Checker(document(app))
    client = falcon.testing.TestClient(app)
    task = _post(client, "/tasks", {"kind": "echo"}).json
    checker.validate_schema(task, "/components/schemas/Task")
    for broken in (
        {**task, "surprise": 1},  # a field the document does not know
        {k: v for k, v in task.items() if k != "status"},  # a documented field missing
        {**task, "status": "done"},  # a value outside the enum
        {**task, "attempts": "1"},  # a wrong type
    ):
        with pytest.raises(AssertionError):
            checker.validate_schema(broken, "/components/schemas/Task")
    with pytest.raises(AssertionError, match="documented"):
        checker.check("GET", "/live", falcon.testing.Result([b"{}"], "418 I'm a teapot", []))


# ---------------------------------------------------------------- real responses


def test_real_responses_match_the_document(
    make_app: Callable[..., falcon.App[Any, Any]], conn: psycopg.Connection[Any]
) -> None:
    app = make_app(api_max_body_bytes=2048)
    checker = Checker(document(app))
    client = falcon.testing.TestClient(app)

    def call(method: str, path: str, body: Any = None, **headers: str) -> falcon.testing.Result:
        if body is None:
            result = client.simulate_request(method, path, headers=headers or None)
        elif method != "POST":
            raw = body if isinstance(body, str) else json.dumps(body)
            result = client.simulate_request(method, path, body=raw, headers={**JSON, **headers})
        else:
            result = _post(client, path, body, **headers)
        checker.check(method, path, result)
        return result

    created = call("POST", "/tasks", {"kind": "echo", "payload": {"a": 1}}).json
    call("POST", "/tasks", {"kind": "echo"}, **{"Idempotency-Key": "k1"})
    call("POST", "/tasks", {"kind": "echo"}, **{"Idempotency-Key": "k1"})  # 200
    call("POST", "/tasks", "{not json")  # 400
    call("POST", "/tasks", {"kind": "nope"})  # 422
    call("POST", "/tasks", {"payload": {"x": "y" * 4000}})  # 413
    assert client.simulate_post("/tasks", body="{}").status_code == 415
    checker.check("POST", "/tasks", client.simulate_post("/tasks", body="{}"))
    call("POST", "/tasks/batch", {"tasks": [{"kind": "echo"}, {"queue": "b"}]})  # 201
    call("POST", "/tasks/batch", {"tasks": [{"idempotency_key": "k1"}]})  # 200
    call("POST", "/tasks/batch", {"tasks": []})  # 422
    call("GET", "/tasks")
    call("GET", "/tasks?status=queued&limit=1")
    call("GET", "/tasks?limit=0")  # 422
    call("GET", f"/tasks/{created['id']}")
    call("GET", f"/tasks/{uuid.uuid4()}")  # 404
    # A graph with a batch callback: the detail of a task with parents, the batch.
    graph = call(
        "POST",
        "/tasks/batch",
        {
            "tasks": [{"kind": "echo", "ref": "a"}, {"kind": "echo", "depends_on": ["a"]}],
            "on_complete": {"kind": "echo", "payload": {"n": 1}},
        },
    ).json
    call("GET", f"/tasks/{graph['tasks'][0]['id']}")
    call("GET", f"/tasks/{graph['tasks'][1]['id']}")
    call("GET", f"/batches/{graph['batch_id']}")
    call("GET", f"/batches/{uuid.uuid4()}")  # 404
    call("POST", "/tasks/batch", {"tasks": [{"kind": "echo", "depends_on": ["zz"]}]})  # 422
    call("POST", f"/tasks/{created['id']}/retry")  # 409: queued
    call("POST", f"/tasks/{created['id']}/cancel")
    call("POST", f"/tasks/{created['id']}/cancel")  # 409
    call("POST", f"/tasks/{created['id']}/retry")
    conn.execute(
        "UPDATE taskq_tasks SET status = 'failed', finished_at = now(), last_error = 'boom'"
        " WHERE id <> %s",
        (created["id"],),
    )
    call("PUT", "/schedules/nightly", {"kind": "echo", "cron": "0 3 * * *"})  # 201
    call("PUT", "/schedules/nightly", {"kind": "echo", "every": 60, "timezone": "Europe/Berlin"})
    call("PUT", "/schedules/nightly", {"kind": "echo", "cron": "0 3 * *"})  # 422
    call("PUT", "/schedules/nightly", "{not json")  # 400
    call("PUT", "/schedules/nightly", {"kind": "echo", "every": 1, "payload": {"x": "y" * 4000}})
    checker.check("PUT", "/schedules/x", client.simulate_put("/schedules/x", body="{}"))  # 415
    call("GET", "/schedules")
    call("GET", "/schedules/nightly")
    call("GET", "/schedules/missing")  # 404
    call("POST", "/schedules/nightly/disable")
    call("POST", "/schedules/nightly/enable")
    call("POST", "/schedules/missing/enable")  # 404
    call("POST", "/schedules/missing/disable")  # 404
    call("DELETE", "/schedules/nightly")  # 204
    call("DELETE", "/schedules/nightly")  # 404
    call("POST", "/queues/b/pause")
    call("POST", "/queues/b/resume")
    call("POST", "/queues/bad%20name/pause")  # 422
    call("POST", "/queues/bad%20name/resume")  # 422
    call("GET", "/queues")
    limits = {"max_running": 2, "rate_limit": {"count": 5, "per_seconds": 1}}
    checker.check(
        "PUT",
        "/queues/lim",
        client.simulate_put("/queues/lim", body=json.dumps(limits), headers=JSON),
    )
    checker.check(
        "PUT",
        "/queues/lim",
        client.simulate_put("/queues/lim", body='{"max_running": 0}', headers=JSON),
    )  # 422
    call("GET", "/queues/lim")
    call("GET", "/queues/idle")
    call("GET", "/stats")
    call("GET", "/live")
    call("GET", "/ready")
    call("GET", "/metrics")
    call("GET", "/openapi.json")
    call("GET", "/dashboard")
    call("HEAD", "/live")
    call("HEAD", "/dashboard")

    down = make_app(database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    down_client = falcon.testing.TestClient(down)
    for method, path, body in (
        ("POST", "/tasks", {"kind": "echo"}),
        ("GET", f"/tasks/{uuid.uuid4()}", None),
        ("GET", f"/batches/{uuid.uuid4()}", None),
        ("GET", "/stats", None),
        ("GET", "/ready", None),
        ("GET", "/schedules", None),
        ("PUT", "/schedules/n", {"kind": "echo", "every": 5}),
        ("GET", "/schedules/n", None),
        ("DELETE", "/schedules/n", None),
        ("POST", "/schedules/n/enable", None),
        ("POST", "/schedules/n/disable", None),
        ("GET", "/queues", None),
        ("POST", "/queues/q/pause", None),
        ("POST", "/queues/q/resume", None),
    ):
        if body is None:
            result = down_client.simulate_request(method, path)
        else:
            result = down_client.simulate_request(method, path, body=json.dumps(body), headers=JSON)
        assert result.status_code == 503, (path, result.text)
        checker.check(method, path, result)

    covered = {(m, t) for m, t, _ in checker.seen}
    assert covered == set(openapi.OPERATIONS), set(openapi.OPERATIONS) - covered


def test_operations_marked_open_are_exactly_the_ones_authentication_leaves_open(
    make_app: Callable[..., falcon.App[Any, Any]],
) -> None:
    from taskq.api.auth import OPEN_PATHS

    assert {path for (_, path), op in openapi.OPERATIONS.items() if op.open} == OPEN_PATHS
    token = "a-long-enough-test-token-0001"
    app = make_app(api_tokens=token)
    checker = Checker(document(app))
    client = falcon.testing.TestClient(app)
    for (method, path), op in openapi.OPERATIONS.items():
        concrete = path.replace("{task_id}", str(uuid.uuid4()))
        result = client.simulate_request(method, concrete)
        if op.open:
            assert result.status_code != 401, path
        else:
            assert result.status_code == 401, path
            checker.check(method, concrete, result)


# ---------------------------------------------------------------- parameters in the code

_READERS = {"get_param", "get_header", "get_param_as_int", "get_param_as_bool"}


def _names_read(resource: object, responder: str) -> set[str]:
    """Query parameters and headers a responder reads (its own code, and the methods of
    its resource it calls), as literal names or module constants: what must be documented."""
    import ast
    import inspect
    import sys
    import textwrap

    cls = type(resource)
    module = sys.modules[cls.__module__]
    seen: set[str] = set()
    names: set[str] = set()
    todo = [responder]
    while todo:
        method = todo.pop()
        if method in seen or not hasattr(cls, method):
            continue
        seen.add(method)
        tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, method))))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            target = node.func
            if isinstance(target.value, ast.Name) and target.value.id == "self":
                todo.append(target.attr)
            elif target.attr in _READERS and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
                elif isinstance(arg, ast.Name):
                    names.add(getattr(module, arg.id))
    return names


def test_every_parameter_the_code_reads_is_documented(app: falcon.App[Any, Any]) -> None:
    checked = 0
    for (method, path), op in openapi.OPERATIONS.items():
        # The router's find() (the interface of every Falcon router) gives the resource.
        # A path parameter is filled with a UUID so that converters such as `:uuid` match.
        found = app._router.find(re.sub(r"\{\w+\}", str(uuid.uuid4()), path))
        assert found is not None, path
        resource, method_map = found[0], found[1]
        resource = getattr(resource, "resource", resource)  # the ASGI adapter's resource
        read = _names_read(resource, method_map[method].__name__)
        documented = {p for p in op.parameters if p not in re.findall(r"\{(\w+)\}", path)}
        assert read == documented, (
            f"{method} {path}: reads {sorted(read)}, documents {sorted(documented)}"
        )
        checked += bool(read)
    assert checked >= 2  # GET /tasks's filters and POST /tasks's Idempotency-Key at least
