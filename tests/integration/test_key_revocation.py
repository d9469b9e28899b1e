"""A revoked key stops working in every API process at once, not after the cache TTL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import AppHarness, make_settings


@pytest.mark.postgres
async def test_revocation_reaches_another_processes_key_cache(tmp_path: Path, pg_url: str) -> None:
    # a TTL far longer than the test: only the NOTIFY can make process B forget the key
    settings = make_settings(tmp_path, pg_url, key_cache_ttl_s=3600.0)
    async with AppHarness(settings, embedded_worker=False) as a, AppHarness(settings, embedded_worker=False) as b:
        caller_a = await a.caller()
        caller_b = caller_a.__class__(account_id=caller_a.account_id, email=caller_a.email, key=caller_a.key,
                                      client=b.client)
        assert (await caller_b.get("/api/v1/account")).status_code == 200  # now cached in B
        keys = await a.container.accounts.list_api_keys(caller_a.account_id)
        await a.container.accounts.revoke_api_key(caller_a.account_id, keys[0].id)
        status = 200
        for _ in range(100):
            status = (await caller_b.get("/api/v1/account")).status_code
            if status == 401:
                break
            await asyncio.sleep(0.05)
        assert status == 401
