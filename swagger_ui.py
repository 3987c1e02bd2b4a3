"""Swagger UI at `/docs`, with every file it loads served by TaskFlow itself.

FastAPI's own page loads Swagger UI from a CDN, which fails on a closed network (CI, air-gapped
deployments). Here the files come from the `fastapi-offline` package (Swagger UI 5 and FastAPI's
favicon; upgrading that package upgrades them) and are mounted under `/docs/static`, so opening
the docs makes no request that leaves the host.

ReDoc stays off: its bundle always loads its logo from cdn.redoc.ly, with no option to stop it.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_PATH = "/docs/static"
ASSETS_DIRECTORY = str(files("fastapi_offline").joinpath("static"))

# Swagger UI's validator badge would send the schema's URL to validator.swagger.io.
OFFLINE_DEFAULTS: dict[str, Any] = {"validatorUrl": None}


def install_docs(app: FastAPI, *, docs_url: str = "/docs") -> None:
    """Add Swagger UI to an app created with `docs_url=None, redoc_url=None`.

    Like FastAPI's own page, it honours `app.swagger_ui_parameters`, `app.swagger_ui_init_oauth`,
    `app.swagger_ui_oauth2_redirect_url` and the ASGI `root_path`.
    """
    if app.openapi_url is None:
        return
    openapi_path = app.openapi_url
    # check_dir: a broken install fails at start-up, not on the first visit to /docs.
    app.mount(STATIC_PATH, StaticFiles(directory=ASSETS_DIRECTORY, check_dir=True), name="docs-static")

    def swagger_ui_html(request: Request) -> HTMLResponse:
        root = _root_path(request)
        redirect_url = app.swagger_ui_oauth2_redirect_url
        return get_swagger_ui_html(
            openapi_url=root + openapi_path,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
            oauth2_redirect_url=root + redirect_url if redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters={**OFFLINE_DEFAULTS, **(app.swagger_ui_parameters or {})},
        )

    app.add_route(docs_url, swagger_ui_html, include_in_schema=False)

    if app.swagger_ui_oauth2_redirect_url:

        def swagger_ui_redirect(_request: Request) -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

        app.add_route(app.swagger_ui_oauth2_redirect_url, swagger_ui_redirect, include_in_schema=False)


def _root_path(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")
