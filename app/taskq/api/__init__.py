"""The REST API (Falcon): `create_app(settings, deps)` builds it."""

from taskq.api.app import Deps, create_app

__all__ = ["Deps", "create_app"]
