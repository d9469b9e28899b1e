"""An app factory for multi-process serving (``uvicorn --factory``): settings from the environment."""

from __future__ import annotations

import os

from fastapi import FastAPI

from apiinone.allocator import tune_for_large_bodies
from apiinone.config import load_settings
from apiinone.web.app import create_app


def app_from_env() -> FastAPI:
    tune_for_large_bodies()  # each spawned process has its own allocator
    embedded = os.environ.get("APIINONE_EMBEDDED_WORKER", "1") == "1"
    return create_app(load_settings(), embedded_worker=embedded, migrate=False)
