"""The delivery state machine: what each answer means, and the retry schedule of API.md."""

from __future__ import annotations

import pytest

from apiinone.domain.webhooks import DEFAULT_RETRY_SCHEDULE_S, DeliveryStatus, outcome_of
from apiinone.webhooks.delivery import DeliveryOptions

AT = 1_700_000_000_000


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_any_2xx_delivers(code: int) -> None:
    outcome = outcome_of(code, attempts_before=3, at=AT, schedule_s=DEFAULT_RETRY_SCHEDULE_S)
    assert (outcome.status, outcome.attempts, outcome.next_attempt_at) == (DeliveryStatus.DELIVERED, 4, None)


def test_gone_stops_even_with_retries_left() -> None:
    outcome = outcome_of(410, attempts_before=0, at=AT, schedule_s=DEFAULT_RETRY_SCHEDULE_S)
    assert (outcome.status, outcome.next_attempt_at) == (DeliveryStatus.STOPPED, None)


@pytest.mark.parametrize("code", [None, 199, 301, 302, 400, 404, 429, 500, 503])
def test_everything_else_is_retried_on_schedule(code: int | None) -> None:
    first = outcome_of(code, attempts_before=0, at=AT, schedule_s=DEFAULT_RETRY_SCHEDULE_S)
    assert (first.status, first.attempts, first.next_attempt_at) == (DeliveryStatus.PENDING, 1, AT + 5_000)
    second = outcome_of(code, attempts_before=1, at=AT, schedule_s=DEFAULT_RETRY_SCHEDULE_S)
    assert second.next_attempt_at == AT + 300_000


def test_schedule_runs_out_into_failed() -> None:
    schedule = (1.0, 2.0)
    last_retry = outcome_of(500, attempts_before=1, at=AT, schedule_s=schedule)
    assert (last_retry.status, last_retry.next_attempt_at) == (DeliveryStatus.PENDING, AT + 2_000)
    final = outcome_of(500, attempts_before=2, at=AT, schedule_s=schedule)
    assert (final.status, final.attempts, final.next_attempt_at) == (DeliveryStatus.FAILED, 3, None)


def test_default_schedule_is_the_contract() -> None:
    assert DEFAULT_RETRY_SCHEDULE_S[:6] == (5, 300, 1800, 7200, 18000, 36000)
    days = sum(DEFAULT_RETRY_SCHEDULE_S) / 86400
    assert 2.5 <= days <= 3.5
    assert days + DEFAULT_RETRY_SCHEDULE_S[-1] / 86400 > 3  # one more retry would pass 3 days


def test_lease_must_outlast_the_timeout() -> None:
    with pytest.raises(ValueError, match="lease"):
        DeliveryOptions(timeout_s=10, lease_s=10)
    with pytest.raises(ValueError, match="concurrency"):
        DeliveryOptions(account_concurrency=0)
