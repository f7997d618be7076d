"""The web dashboard at /ui (§D): pages served by the gateway itself, no internet needed."""

from gatewatch.ui.routes import create_ui_router
from gatewatch.ui.session import (
    CSRF_HEADER,
    SESSION_COOKIE,
    CsrfError,
    DashboardAuth,
    SessionSigner,
)

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "CsrfError",
    "DashboardAuth",
    "SessionSigner",
    "create_ui_router",
]
