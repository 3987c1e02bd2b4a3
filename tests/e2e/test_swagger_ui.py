"""Swagger UI at /docs: served by TaskFlow itself, and usable in a real browser on a closed network."""

from __future__ import annotations

import re

import httpx
from conftest import TokenFactory
from fastapi.testclient import TestClient

from config import Settings
from e2e.harness import OfflinePage, screenshot_path, serve
from main import create_app

ASSET = re.compile(r'(?:src|href)="([^"]+)"')


def test_docs_page_loads_swagger_ui_5_from_taskflow_itself(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200, page.text
    assets = ASSET.findall(page.text)
    assert sorted(assets) == [
        "/docs/static/favicon.png",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/swagger-ui.css",
    ]
    assert "://" not in page.text  # no absolute URL anywhere, so no CDN
    assert '"persistAuthorization": true' in page.text  # the app's swagger_ui_parameters are honoured
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    bundle = client.get("/docs/static/swagger-ui-bundle.js").text
    assert re.search(r'PACKAGE_VERSION:"5\.\d+\.\d+"', bundle), "Swagger UI 5 renders OpenAPI 3.1; 4 does not"
    assert client.get("/redoc").status_code == 404  # off: ReDoc loads its logo from a CDN


def test_docs_behind_a_proxy_prefix_load_their_files_under_it(settings: Settings) -> None:
    with TestClient(create_app(settings), root_path="/taskflow") as client:
        page = client.get("/docs")
    assert page.status_code == 200, page.text
    assert set(ASSET.findall(page.text)) >= {"/taskflow/docs/static/swagger-ui-bundle.js"}
    assert "url: '/taskflow/openapi.json'" in page.text


def test_swagger_ui_in_chromium_lists_and_starts_a_task_with_a_pasted_token(
    settings: Settings, make_token: TokenFactory, offline_page: OfflinePage
) -> None:
    from playwright.sync_api import expect

    token = make_token("alice")
    page = offline_page.page
    with serve(create_app(settings)) as base_url:
        created = httpx.post(
            f"{base_url}/api/tasks",
            json={"title": "Proofread the API docs"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]

        page.goto(f"{base_url}/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("TaskFlow")

        page.locator(".auth-wrapper button.authorize").click()
        dialog = page.locator(".dialog-ux .modal-ux")
        dialog.locator("input").fill(token)
        dialog.locator(".auth-btn-wrapper button.authorize").click()
        expect(dialog.locator(".auth-btn-wrapper")).to_contain_text("Logout")
        dialog.locator("button.btn-done").click()
        expect(dialog).to_have_count(0)

        listing = page.locator("#operations-tasks-list_tasks_api_tasks_get")
        listing.locator(".opblock-summary").click()
        listing.locator("button.try-out__btn").click()
        listing.locator("button.execute").click()
        response = listing.locator(".live-responses-table .response").first
        expect(response.locator(".response-col_status")).to_have_text("200")
        expect(response.locator(".response-col_description")).to_contain_text("Proofread the API docs")
        listing.screenshot(path=screenshot_path("swagger-ui-list-tasks.png"))

        start = page.locator("#operations-workflow-start_task_api_tasks__task_id__start_post")
        start.locator(".opblock-summary").click()
        start.locator("button.try-out__btn").click()
        start.locator('tr[data-param-name="task_id"] input').fill(str(task_id))
        start.locator("button.execute").click()
        response = start.locator(".live-responses-table .response").first
        expect(response.locator(".response-col_status")).to_have_text("200")
        expect(response.locator(".response-col_description")).to_contain_text('"status": "in_progress"')
        expect(response.locator(".response-col_description")).to_contain_text('"assigned_to": "alice"')
        start.screenshot(path=screenshot_path("swagger-ui-start-task.png"))

        task = httpx.get(f"{base_url}/api/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"})
    assert task.json()["status"] == "in_progress"
    assert offline_page.left_host == []
