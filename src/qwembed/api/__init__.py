"""HTTP only: schemas, routes, errors, auth, metrics — no model code."""

from .app import create_app
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
