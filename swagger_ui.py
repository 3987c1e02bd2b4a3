"""Swagger UI for `/docs`, served by TaskFlow itself."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse


def install_docs(app: FastAPI) -> None:
    """Add `/docs` to an app created with `docs_url=None, redoc_url=None`."""

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - Swagger UI")
