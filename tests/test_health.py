"""The two open health checks and the request-id header every response carries."""

from fastapi.testclient import TestClient


def test_health_needs_no_token(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "healthy", "version": "0.1.0"}


def test_database_health_reports_connected(client: TestClient) -> None:
    response = client.get("/api/health/db")
    assert response.status_code == 200
    assert response.json() == {"database": "connected"}


def test_every_response_has_a_request_id(client: TestClient) -> None:
    assert len(client.get("/health").headers["X-Request-ID"]) == 32
    assert client.get("/nope", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"


def test_a_malformed_request_id_is_replaced(client: TestClient) -> None:
    response = client.get("/health", headers={"X-Request-ID": "bad id with spaces"})
    assert response.headers["X-Request-ID"] != "bad id with spaces"
