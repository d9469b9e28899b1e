"""Idempotency-Key on the create routes, on SQLite and PostgreSQL: replay, conflict, scope, races."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from tests.conftest import AppHarness, Caller

SEED = {"model": "local-typeset", "prompt": "Bean & Brew, idempotent", "quality": "medium", "aspect_ratio": "1:1"}
CREATE = "/api/v1/images/generations"


async def _holds(caller: Caller) -> list[dict[str, object]]:
    ledger = (await caller.get("/api/v1/account/ledger", params={"limit": 100})).json()["data"]
    return [e for e in ledger if e["kind"] == "hold"]


async def test_same_key_and_body_replays_the_first_response_and_charges_once(harness: AppHarness) -> None:
    caller = await harness.caller(credits=10)
    headers = {"Idempotency-Key": "order-42"}
    first = await caller.post(CREATE, json=SEED, headers=headers)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    await caller.wait_for(first.json()["task_id"])
    again = await caller.post(CREATE, json=SEED, headers=headers)
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.json() == first.json()  # the first response, not the task as it is now
    assert len((await caller.get("/api/v1/tasks")).json()["data"]) == 1
    assert len(await _holds(caller)) == 1
    assert (await caller.get("/api/v1/account")).json()["credits"]["balance"] == 9


async def test_same_key_with_another_body_is_409_and_creates_nothing(harness: AppHarness) -> None:
    caller = await harness.caller(credits=10)
    headers = {"Idempotency-Key": "order-43"}
    assert (await caller.post(CREATE, json=SEED, headers=headers)).status_code == 202
    r = await caller.post(CREATE, json={**SEED, "prompt": "something else"}, headers=headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "idempotency_conflict"
    assert len((await caller.get("/api/v1/tasks")).json()["data"]) == 1
    assert len(await _holds(caller)) == 1


async def test_keys_are_scoped_to_the_account(sqlite_harness: AppHarness) -> None:
    alice, bob = await sqlite_harness.caller(), await sqlite_harness.caller()
    headers = {"Idempotency-Key": "shared-name"}
    a = await alice.post(CREATE, json=SEED, headers=headers)
    b = await bob.post(CREATE, json=SEED, headers=headers)
    assert a.status_code == b.status_code == 202
    assert a.json()["task_id"] != b.json()["task_id"] and "idempotent-replayed" not in b.headers


@pytest.mark.parametrize("key", ["", "k" * 256])
async def test_key_length_is_checked(sqlite_harness: AppHarness, key: str) -> None:
    caller = await sqlite_harness.caller()
    r = await caller.post(CREATE, json=SEED, headers={"Idempotency-Key": key})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Idempotency-Key"
    assert (await caller.get("/api/v1/tasks")).json()["data"] == []


async def test_a_255_character_key_is_accepted(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller()
    headers = {"Idempotency-Key": "k" * 255}
    assert (await caller.post(CREATE, json=SEED, headers=headers)).status_code == 202
    assert (await caller.post(CREATE, json=SEED, headers=headers)).headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("credits", [100, 1], ids=["plenty", "exactly-one-price"])
async def test_twenty_concurrent_requests_with_one_key_create_one_task(harness: AppHarness, credits: int) -> None:
    """With exactly one price available the losers must still replay the winner, never answer 402."""
    caller = await harness.caller(credits=credits)
    headers = {"Idempotency-Key": f"race-{uuid.uuid4().hex}"}
    responses = await asyncio.gather(*(caller.post(CREATE, json=SEED, headers=headers) for _ in range(20)))
    assert [r.status_code for r in responses] == [202] * 20, [r.text for r in responses if r.status_code != 202]
    assert len({r.json()["task_id"] for r in responses}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
    tasks = (await caller.get("/api/v1/tasks")).json()["data"]
    assert len(tasks) == 1
    assert len(await _holds(caller)) == 1
    done = await caller.wait_for(tasks[0]["task_id"])
    assert done["status"] == "succeeded"
    assert (await caller.get("/api/v1/account")).json()["credits"] == {
        "balance": credits - 1, "held": 0, "available": credits - 1}


async def test_a_failed_create_stores_nothing_so_a_retry_can_succeed(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller(credits=0)
    headers = {"Idempotency-Key": "after-top-up"}
    assert (await caller.post(CREATE, json=SEED, headers=headers)).status_code == 402
    await sqlite_harness.container.accounts.grant(caller.account_id, 5_000_000, note="top-up", actor="test")  # µcr
    r = await caller.post(CREATE, json=SEED, headers=headers)
    assert r.status_code == 202 and "idempotent-replayed" not in r.headers


async def test_an_expired_key_starts_afresh(sqlite_harness: AppHarness) -> None:
    """Kept 24 h: after that the same key creates a new task instead of failing on the old row."""
    from sqlalchemy import update

    from apiinone.db import tables as t

    caller = await sqlite_harness.caller()
    headers = {"Idempotency-Key": "yesterday"}
    first = (await caller.post(CREATE, json=SEED, headers=headers)).json()["task_id"]
    async with sqlite_harness.container.db.uow() as uow:
        await uow.conn.execute(update(t.idempotency_keys).values(created_at=t.idempotency_keys.c.created_at - 25 * 3600_000))
        await uow.commit()
    r = await caller.post(CREATE, json={**SEED, "prompt": "a new day"}, headers=headers)
    assert r.status_code == 202 and r.json()["task_id"] != first
    again = await caller.post(CREATE, json={**SEED, "prompt": "a new day"}, headers=headers)
    assert again.headers["idempotent-replayed"] == "true" and again.json()["task_id"] == r.json()["task_id"]


async def test_replay_with_prefer_wait_waits_for_the_same_task(sqlite_harness: AppHarness) -> None:
    caller = await sqlite_harness.caller()
    headers = {"Idempotency-Key": "wait-and-retry"}
    first = await caller.post(CREATE, json=SEED, headers=headers)
    replay = await caller.post(CREATE, json=SEED, headers={**headers, "Prefer": "wait=30"})
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["preference-applied"] == "wait=30"
    assert replay.json()["task_id"] == first.json()["task_id"] and replay.json()["status"] == "succeeded"


async def _openai_post(client: httpx.AsyncClient, caller: Caller, key: str, body: dict[str, object]) -> httpx.Response:
    return await client.post("/v1/images/generations", json=body,
                             headers={**caller.headers, "Idempotency-Key": key})


async def test_openai_route_replays_the_same_images(harness: AppHarness) -> None:
    caller = await harness.caller(credits=10)
    body = {"model": "local-typeset", "prompt": "once only", "n": 2}
    first = await _openai_post(harness.client, caller, "oa-1", body)
    assert first.status_code == 200, first.text
    again = await _openai_post(harness.client, caller, "oa-1", body)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert len(await _holds(caller)) == 1
    assert (await caller.get("/api/v1/account")).json()["credits"]["balance"] == 8
    conflict = await _openai_post(harness.client, caller, "oa-1", {**body, "n": 1})
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_conflict"


async def test_openai_edit_replays_despite_a_new_multipart_boundary(sqlite_harness: AppHarness) -> None:
    """A retried multipart body differs in its boundary; the key compares fields and file contents."""
    from tests.integration.test_openai_compat import png_bytes

    caller = await sqlite_harness.caller(credits=10)
    image = png_bytes((64, 64), (200, 30, 30))
    responses = []
    for _ in range(2):
        responses.append(await sqlite_harness.client.post(
            "/v1/images/edits", headers={**caller.headers, "Idempotency-Key": "edit-1"},
            data={"model": "local-typeset", "prompt": "add a frame"},
            files=[("image", ("in.png", image, "image/png"))]))
    first, again = responses
    assert first.status_code == 200, first.text
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    changed = await sqlite_harness.client.post(
        "/v1/images/edits", headers={**caller.headers, "Idempotency-Key": "edit-1"},
        data={"model": "local-typeset", "prompt": "add a frame"},
        files=[("image", ("in.png", png_bytes((64, 64), (0, 0, 200)), "image/png"))])
    assert changed.status_code == 409
    assert len(await _holds(caller)) == 1
