"""Webhook delivery through the real app and a real receiver on 127.0.0.1, on SQLite and PostgreSQL.

Traffic only ever goes to loopback (``APIINONE_EGRESS_ALLOW=127.0.0.0/8``); the refusal test uses
the strict policy and proves no connection reached the receiver.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from apiinone.db.database import Database
from apiinone.domain.webhooks import DeliveryStatus
from apiinone.ids import new_id, now_ms
from apiinone.net.egress import EgressPolicy
from apiinone.webhooks.delivery import DeliveryClients, DeliveryOptions, DeliveryWorker
from apiinone.worker.wakeup import Wakeup
from tests.conftest import AppHarness, Caller, make_settings
from tests.fakes.webhook_receiver import Received, Reply, WebhookReceiver

SEED = {"model": "local-typeset", "prompt": 'A sign that says "hello"', "quality": "medium", "aspect_ratio": "1:1"}
FAST_RETRIES = [0.2, 0.2, 0.2]


def webhook_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "egress_allow": "127.0.0.0/8", "webhook_retry_schedule_s": FAST_RETRIES, "webhook_poll_s": 0.2,
        "webhook_timeout_s": 10.0, "webhook_lease_s": 30.0,
    }
    values.update(overrides)
    return make_settings(tmp_path, database_url, **values)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as r:
        yield r


@pytest.fixture
async def hooks(tmp_path: Path, database_url: str) -> AsyncIterator[AppHarness]:
    async with AppHarness(webhook_settings(tmp_path, database_url)) as h:
        yield h


def replies(*statuses: int | Reply, then: int = 200) -> Callable[[Received], Reply]:
    """Answer the n-th request with the n-th entry, and every later one with ``then``."""
    plan = [s if isinstance(s, Reply) else Reply(s) for s in statuses]

    def respond(_request: Received) -> Reply:
        return plan.pop(0) if plan else Reply(then)

    return respond


async def secret_of(caller: Caller) -> str:
    secret: str = (await caller.get("/api/v1/account/webhook-secret")).json()["secret"]
    return secret


async def start_task(caller: Caller, callback_url: str) -> str:
    r = await caller.post("/api/v1/images/generations", json={**SEED, "callback_url": callback_url})
    assert r.status_code == 202, r.text
    task_id: str = r.json()["task_id"]
    return task_id


async def settled_delivery(caller: Caller, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The task's delivery once it is no longer pending (the log is written after the receiver
    answered, so a test waits for the log rather than for the request)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await caller.get(f"/api/v1/tasks/{task_id}/deliveries")
        assert r.status_code == 200, r.text
        data: list[dict[str, Any]] = r.json()["data"]
        if data and data[0]["status"] != "pending":
            return data[0]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"delivery of {task_id} still pending: {data}")
        await asyncio.sleep(0.05)


def verified(secret: str, request: Received) -> dict[str, Any]:
    """The payload as a Standard Webhooks receiver sees it (raises if the signature is wrong)."""
    payload: dict[str, Any] = Webhook(secret).verify(request.body, request.headers)
    return payload


async def test_failed_attempt_is_retried_with_same_id_and_valid_signatures(
        hooks: AppHarness, receiver: WebhookReceiver) -> None:
    receiver.respond = replies(500)
    caller = await hooks.caller()
    secret = await secret_of(caller)
    task_id = await start_task(caller, f"{receiver.url}/hook")
    delivery = await settled_delivery(caller, task_id)

    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivery["id"]
    task = (await caller.get(f"/api/v1/tasks/{task_id}")).json()
    assert task["status"] == "succeeded"
    assert verified(secret, first) == verified(secret, second) == task
    assert first.headers["content-type"] == "application/json"

    assert delivery["status"] == "delivered" and delivery["task_id"] == task_id
    assert delivery["url"] == f"{receiver.url}/hook" and delivery["attempt_count"] == 2
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    assert delivery["attempts"][0]["next_attempt_at"] is not None
    assert delivery["attempts"][1]["next_attempt_at"] is None and delivery["next_attempt_at"] is None
    assert delivery["delivered_at"] is not None and delivery["last_status_code"] == 200


async def test_gone_stops_retries(hooks: AppHarness, receiver: WebhookReceiver) -> None:
    receiver.respond = replies(410, then=500)
    caller = await hooks.caller()
    delivery = await settled_delivery(caller, await start_task(caller, f"{receiver.url}/gone"))
    assert delivery["status"] == "stopped"
    assert [a["status_code"] for a in delivery["attempts"]] == [410]
    assert delivery["attempts"][0]["next_attempt_at"] is None


async def test_failing_receiver_is_retried_until_the_schedule_runs_out(
        receiver: WebhookReceiver, tmp_path: Path, sqlite_url: str) -> None:
    receiver.respond = replies(then=500)
    async with AppHarness(webhook_settings(tmp_path, sqlite_url)) as h:
        caller = await h.caller()
        delivery = await settled_delivery(caller, await start_task(caller, f"{receiver.url}/down"))
    assert delivery["status"] == "failed"
    assert [a["status_code"] for a in delivery["attempts"]] == [500] * (len(FAST_RETRIES) + 1)
    assert [a["next_attempt_at"] is None for a in delivery["attempts"]] == [False, False, False, True]
    assert len(receiver.received) == len(FAST_RETRIES) + 1


async def test_redirect_is_not_followed(receiver: WebhookReceiver, tmp_path: Path, sqlite_url: str) -> None:
    receiver.respond = replies(Reply(302, {"Location": f"{receiver.url}/elsewhere"}))
    async with AppHarness(webhook_settings(tmp_path, sqlite_url)) as h:
        caller = await h.caller()
        delivery = await settled_delivery(caller, await start_task(caller, f"{receiver.url}/hook"))
    assert [r.path for r in receiver.received] == ["/hook", "/hook"]
    assert [a["status_code"] for a in delivery["attempts"]] == [302, 200]


async def test_no_answer_in_time_counts_as_a_failed_attempt(
        receiver: WebhookReceiver, tmp_path: Path, sqlite_url: str) -> None:
    receiver.respond = replies(Reply(hang=True))
    async with AppHarness(webhook_settings(tmp_path, sqlite_url, webhook_timeout_s=0.5, webhook_lease_s=5)) as h:
        caller = await h.caller()
        delivery = await settled_delivery(caller, await start_task(caller, f"{receiver.url}/slow"))
    assert delivery["status"] == "delivered"
    first, second = delivery["attempts"]
    assert first["status_code"] is None and "no answer within 0.5 s" in first["error"]
    assert second["status_code"] == 200 and second["error"] is None


async def test_rotation_signs_with_old_and_new_secret(hooks: AppHarness, receiver: WebhookReceiver) -> None:
    caller = await hooks.caller()
    old = await secret_of(caller)
    rotated = await caller.post("/api/v1/account/webhook-secret/rotate")
    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new != old and new == await secret_of(caller)
    task_id = await start_task(caller, f"{receiver.url}/hook")
    await settled_delivery(caller, task_id)
    (request,) = receiver.received
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert verified(old, request)["task_id"] == verified(new, request)["task_id"] == task_id


async def test_after_the_grace_period_only_the_new_secret_signs(
        hooks: AppHarness, receiver: WebhookReceiver) -> None:
    caller = await hooks.caller()
    old = await secret_of(caller)
    new = await hooks.container.accounts.rotate_webhook_secret(caller.account_id, grace_ms=-1)
    await settled_delivery(caller, await start_task(caller, f"{receiver.url}/hook"))
    (request,) = receiver.received
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert verified(new, request)
    with pytest.raises(Exception, match="signature"):
        verified(old, request)


async def test_redeliver_sends_again_with_the_same_id(hooks: AppHarness, receiver: WebhookReceiver) -> None:
    caller = await hooks.caller()
    task_id = await start_task(caller, f"{receiver.url}/hook")
    first = await settled_delivery(caller, task_id)
    r = await caller.post(f"/api/v1/tasks/{task_id}/deliveries/redeliver")
    assert r.status_code == 202, r.text
    assert r.json()["id"] == first["id"]
    await receiver.wait_for(lambda got: len(got) == 2)
    again = await settled_delivery(caller, task_id)
    assert again["status"] == "delivered" and [a["status_code"] for a in again["attempts"]] == [200, 200]
    assert {r.headers["webhook-id"] for r in receiver.received} == {first["id"]}


async def test_deliveries_are_visible_only_to_the_task_owner(
        hooks: AppHarness, receiver: WebhookReceiver) -> None:
    owner, other = await hooks.caller(), await hooks.caller()
    task_id = await start_task(owner, f"{receiver.url}/hook")
    await settled_delivery(owner, task_id)
    for response in (await other.get(f"/api/v1/tasks/{task_id}/deliveries"),
                     await other.post(f"/api/v1/tasks/{task_id}/deliveries/redeliver"),
                     await owner.get("/api/v1/tasks/tsk_nope/deliveries")):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "task_not_found"
    assert (await hooks.client.get(f"/api/v1/tasks/{task_id}/deliveries")).json()["error"]["code"] == "unauthorized"
    assert len(receiver.received) == 1


async def test_task_without_callback_has_no_deliveries(hooks: AppHarness) -> None:
    caller = await hooks.caller()
    r = await caller.post("/api/v1/images/generations", json=SEED)
    task_id = r.json()["task_id"]
    await caller.wait_for(task_id)
    assert (await caller.get(f"/api/v1/tasks/{task_id}/deliveries")).json() == {"data": [], "next_cursor": None}
    r = await caller.post(f"/api/v1/tasks/{task_id}/deliveries/redeliver")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_slow_receiver_does_not_hold_up_other_accounts(
        receiver: WebhookReceiver, tmp_path: Path, database_url: str) -> None:
    """Account A's receiver never answers; B's webhook still goes out while A's are stuck, and A
    never has more than its share of attempts in flight."""
    receiver.respond = lambda request: Reply(hang=request.path == "/slow")
    settings = webhook_settings(tmp_path, database_url, webhook_concurrency=4, webhook_account_concurrency=2,
                                webhook_timeout_s=120, webhook_lease_s=240)
    async with AppHarness(settings) as h:
        slow, fast = await h.caller(), await h.caller()
        slow_tasks = [await start_task(slow, f"{receiver.url}/slow") for _ in range(5)]
        for task_id in slow_tasks:
            await slow.wait_for(task_id)
        await receiver.wait_for(lambda got: len(got) == 2)
        fast_task = await start_task(fast, f"{receiver.url}/fast")
        got = await receiver.wait_for(lambda got: any(r.path == "/fast" for r in got))
        assert [r.path for r in got].count("/slow") == 2
        assert (await settled_delivery(fast, fast_task))["status"] == "delivered"
        receiver.release()
        for task_id in slow_tasks:
            assert (await settled_delivery(slow, task_id))["status"] == "delivered"
    assert receiver.max_in_flight <= 3


async def test_connect_time_guard_refuses_loopback_without_allowance(
        receiver: WebhookReceiver, tmp_path: Path, sqlite_url: str) -> None:
    """A delivery whose URL became internal (here: loopback under the strict policy) is refused
    when connecting, logged as a failed attempt, and no connection is made."""
    async with AppHarness(webhook_settings(tmp_path, sqlite_url, egress_allow=None)) as h:
        caller = await h.caller()
        delivery_id = new_id("msg")
        async with h.container.db.uow() as uow:
            await uow.webhooks.enqueue(delivery_id=delivery_id, task_id="tsk_x", account_id=caller.account_id,
                                       url=f"{receiver.url}/hook", payload=b"{}", at=now_ms())
            await uow.commit()
        h.container.webhook_wakeup.set()
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            async with h.container.db.uow(write=False) as uow:
                delivery = await uow.webhooks.get(delivery_id)
            assert delivery is not None
            if delivery.last_error or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
    assert delivery.last_error is not None and delivery.last_error.startswith("url_not_allowed")
    assert delivery.status is DeliveryStatus.PENDING and delivery.attempts == 1
    assert receiver.connections == 0


async def test_two_workers_deliver_each_webhook_once(receiver: WebhookReceiver, database_url: str) -> None:
    """Deliveries leased by competing workers (separate connection pools, as separate processes
    would have) go out exactly once each."""
    count = 40
    setup = Database(database_url)
    async with setup.uow() as uow:
        await uow.accounts.add(_account("acc_w"), None)
        for i in range(count):
            await uow.webhooks.enqueue(delivery_id=f"msg_{i:03d}", task_id=f"tsk_{i}", account_id="acc_w",
                                       url=f"{receiver.url}/hook", payload=orjson.dumps({"i": i}), at=now_ms())
        await uow.commit()
    await setup.dispose()
    options = DeliveryOptions(concurrency=8, account_concurrency=8, timeout_s=10, lease_s=30, poll_s=0.1)
    loopback = EgressPolicy.from_setting("127.0.0.0/8")
    workers = [DeliveryWorker(Database(database_url), DeliveryClients(loopback, options), options, Wakeup())
               for _ in range(2)]
    for worker in workers:
        await worker.start()
    await receiver.wait_for(lambda got: len(got) >= count)
    check = Database(database_url)
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        async with check.uow(write=False) as uow:
            states = [await uow.webhooks.get(f"msg_{i:03d}") for i in range(count)]
        if all(d is not None and d.status is DeliveryStatus.DELIVERED for d in states):
            break
        await asyncio.sleep(0.05)
    for worker in workers:
        await worker.stop()
        await worker.client.aclose()
        await worker.db.dispose()
    await check.dispose()
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert sorted(ids) == [f"msg_{i:03d}" for i in range(count)]
    assert all(d is not None and d.status is DeliveryStatus.DELIVERED for d in states)


async def test_an_attempt_whose_lease_was_taken_over_does_not_settle_the_delivery(
        receiver: WebhookReceiver, database_url: str) -> None:
    """A worker that outlived its lease (and lost the delivery to another) logs its attempt but
    leaves the delivery to the new lease holder."""
    db = Database(database_url)
    async with db.uow() as uow:
        await uow.accounts.add(_account("acc_l"), None)
        await uow.webhooks.enqueue(delivery_id="msg_lease", task_id="tsk_lease", account_id="acc_l",
                                   url=f"{receiver.url}/hook", payload=b"{}", at=now_ms())
        await uow.commit()
    options = DeliveryOptions(timeout_s=10, lease_s=30)
    slow_worker = DeliveryWorker(db, DeliveryClients(EgressPolicy.from_setting("127.0.0.0/8"), options), options)
    (leased, secrets), = (await slow_worker.lease(1))[0]
    assert leased.lease_expires_at is not None
    async with db.uow() as uow:
        after_expiry = leased.lease_expires_at + 1
        (taken,) = await uow.webhooks.lease([leased.id], now=after_expiry, lease_until=after_expiry + 30_000)
        await uow.commit()
    await slow_worker.attempt(leased, secrets)
    await slow_worker.client.aclose()
    async with db.uow(write=False) as uow:
        (state,) = await uow.webhooks.list_for_task("tsk_lease", "acc_l")
    await db.dispose()
    assert len(receiver.received) == 1
    assert [a.status_code for a in state.log] == [200]
    assert state.status is DeliveryStatus.PENDING and state.lease_expires_at == taken.lease_expires_at


def _account(account_id: str) -> Any:
    from apiinone.domain.accounts import Account
    from apiinone.webhooks.signing import new_webhook_secret

    return Account(id=account_id, email=f"{account_id}@example.com", created_at=now_ms(),
                   webhook_secret=new_webhook_secret())
