"""The spec's shape: what the fuzz stage relies on, checked without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from apiinone.config import Settings
from apiinone.web.app import create_app


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir: Path = tmp_path_factory.mktemp("spec")
    app = create_app(Settings(env="test", data_dir=data_dir, secret_key="spec-test-secret-key"), embedded_worker=False)
    built: dict[str, Any] = app.openapi()
    return built


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def test_no_422_and_every_error_has_the_family_shape(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, method, op in _operations(spec):
        assert "422" not in op["responses"], (method, path)
        assert "503" in op["responses"], (method, path)
        family = ("AnthropicError" if path.startswith("/v1/messages") else
                  "OpenAIError" if path.startswith("/v1/") else "Error")
        for status, response in op["responses"].items():
            if status[0] in "45":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": f"#/components/schemas/{family}"}, (method, path, status)
            else:
                assert response.get("content"), (method, path, status)  # every success has a schema


def test_bearer_security_on_every_route_but_the_public_models(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An `aio_` API key"}
    for path, method, op in _operations(spec):
        public = path in ("/api/v1/models", "/api/v1/models/{model_id}")
        assert op["security"] == ([] if public else [{"bearer": []}]), (method, path)
        assert ("401" in op["responses"]) is not public


def test_list_routes_declare_their_query_parameters(spec: dict[str, Any]) -> None:
    for path, expected in (("/api/v1/tasks", {"status", "model", "limit", "cursor"}),
                           ("/api/v1/account/ledger", {"kind", "limit", "cursor"})):
        names = {p["name"] for p in spec["paths"][path]["get"]["parameters"]}
        assert names == expected, path


def test_v1_routes_declare_their_request_bodies(spec: dict[str, Any]) -> None:
    generations = spec["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]
    assert generations["application/json"]["schema"]["required"] == ["model", "prompt"]
    edits = spec["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert edits["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    create = spec["paths"]["/api/v1/images/generations"]["post"]
    assert {"402", "409", "413"} <= set(create["responses"])
