"""app/taskq/handlers.py: the registry, the built-in kinds, loading user modules."""

from __future__ import annotations

import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from taskq.errors import HandlerModuleError, NonRetryableError, TaskCancelled, UnknownKind
from taskq.handlers import Registry, TaskContext, default_registry, register_builtins


def _ctx(attempt: int = 1) -> TaskContext:
    return TaskContext(uuid.uuid4(), "k", "default", attempt, 5, threading.Event())


@pytest.fixture
def registry() -> Registry:
    r = Registry()
    register_builtins(r)
    return r


def test_builtins(registry: Registry) -> None:
    assert registry.kinds() == ["echo", "fail", "sleep"]
    assert registry.get("echo").fn({"a": [1]}) == {"a": [1]}
    ctx = TaskContext(uuid.uuid4(), "sleep", "default", 1, 1, threading.Event())
    assert registry.get("sleep").fn({"seconds": 0.01}, ctx)["slept"] >= 0.01
    with pytest.raises(NonRetryableError, match="seconds"):
        registry.get("sleep").fn({"seconds": "soon"}, ctx)
    ctx.cancelled.set()  # the built-in sleep stops on cancel or timeout
    with pytest.raises(TaskCancelled):
        registry.get("sleep").fn({"seconds": 60}, ctx)
    with pytest.raises(RuntimeError, match="as requested"):
        registry.get("fail").fn({})
    with pytest.raises(NonRetryableError, match="custom"):
        registry.get("fail").fn({"retryable": False, "message": "custom"})


def test_unknown_kind_names_the_field(registry: Registry) -> None:
    with pytest.raises(UnknownKind) as info:
        registry.get("nope")
    assert info.value.field == "kind"


def test_decorator_and_context(registry: Registry) -> None:
    @registry.handler("attempt", takes_context=True)
    def attempt(payload: dict[str, Any], ctx: TaskContext) -> int:
        return ctx.attempt

    assert "attempt" in registry
    assert registry.get("attempt").fn({}, _ctx(attempt=3)) == 3


def test_load_modules_registers_user_handlers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "user_tasks_for_test.py").write_text(
        "from taskq.handlers import handler\n\n"
        "@handler('greet')\n"
        "def greet(payload):\n"
        "    return f\"hello {payload['name']}\"\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        default_registry.load_modules(["user_tasks_for_test"])
        assert default_registry.get("greet").fn({"name": "ada"}) == "hello ada"
    finally:
        sys.modules.pop("user_tasks_for_test", None)
        default_registry._handlers.pop("greet", None)


def test_load_modules_fails_loudly_on_a_typo(registry: Registry) -> None:
    with pytest.raises(HandlerModuleError, match="TASKQ_HANDLER_MODULES names 'no_such_mod"):
        registry.load_modules(["no_such_module_here"])


def test_a_module_failing_inside_is_named_with_its_error(
    registry: Registry, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_handlers_mod.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(HandlerModuleError) as info:
        registry.load_modules(["broken_handlers_mod"])
    assert "importing 'broken_handlers_mod' failed" in info.value.message
    assert "no_such_dependency_xyz" in info.value.message
