"""docs/API.md is the project's API reference: it must list every operation that /openapi.json
publishes, and every /api/ or /v1/ route it names must exist, so the two cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

from apiinone.config import Settings
from apiinone.web.app import create_app

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "API.md"
ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`?\s]*)[^`]*`")
FIX = "update docs/API.md (its route index and the section of the route) in the same change"


def published_operations(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(Settings(data_dir=tmp_path, secret_key="test-secret-key-not-a-placeholder"),
                     embedded_worker=False, migrate=False)
    return {(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops}


def route_index(text: str) -> str:
    return text.split("## Route index", 1)[1]


def test_every_published_operation_is_in_the_route_index(tmp_path: Path) -> None:
    indexed = set(ROUTE.findall(route_index(REFERENCE.read_text())))
    missing = sorted(published_operations(tmp_path) - indexed)
    assert not missing, f"in /openapi.json but not in docs/API.md: {missing}; {FIX}"


def test_every_api_route_the_reference_names_exists(tmp_path: Path) -> None:
    named = {(m, p) for m, p in ROUTE.findall(REFERENCE.read_text()) if p.startswith(("/api/", "/v1/"))}
    assert len(named) > 10
    unknown = sorted(named - published_operations(tmp_path))
    assert not unknown, f"docs/API.md names routes that /openapi.json does not have: {unknown}; {FIX}"


def test_the_readme_links_the_reference_inside_the_repository() -> None:
    readme = (REFERENCE.parents[1] / "README.md").read_text()
    assert "](docs/API.md)" in readme
    assert "../shared/" not in readme
    for image in re.findall(r"\]\((docs/images/[^)]+)\)", readme):
        assert (REFERENCE.parents[1] / image).is_file(), image
