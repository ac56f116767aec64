"""What the API needs from the outside world: a pool, the kind registry, the notifier.

Tests build their own `Deps` (a pool on their database, a registry of test kinds).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from taskq import db
from taskq.handlers import Registry, default_registry
from taskq.notifier import Notifier
from taskq.settings import Settings


@dataclasses.dataclass
class Deps:
    pool: Any
    registry: Registry = dataclasses.field(default_factory=lambda: default_registry)
    # Set when the pool's sessions leave waking the workers to the API (taskq/notifier.py);
    # None means the enqueue trigger notifies at commit, as for any other session.
    notifier: Notifier | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Deps:
        default_registry.load_modules(settings.handler_modules)
        return cls(
            pool=db.create_pool(settings, name="api", notify_on_insert=False),
            registry=default_registry,
            notifier=Notifier(settings),
        )
