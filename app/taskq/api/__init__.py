"""The REST API (Falcon): `create_app(settings, deps)` builds it."""

from taskq.api.app import create_app
from taskq.api.deps import Deps

__all__ = ["Deps", "create_app"]
