"""Session helpers that need no database: CSRF comparison, pre-login tokens, the login throttle."""

from __future__ import annotations

import pytest

from apiinone.errors import RateLimited
from apiinone.services.sessions import LoginThrottle, anonymous_csrf_token, csrf_matches
from apiinone.web.routes.pages import safe_next


def test_csrf_matches_only_the_exact_token() -> None:
    assert csrf_matches("abc", "abc")
    assert not csrf_matches("abc", "abd")
    assert not csrf_matches("abc", None)
    assert not csrf_matches("", "")
    assert not csrf_matches(None, None)


def test_pre_login_token_depends_on_cookie_and_secret() -> None:
    token = anonymous_csrf_token("secret-1", "cookie-a")
    assert token == anonymous_csrf_token("secret-1", "cookie-a")
    assert token != anonymous_csrf_token("secret-2", "cookie-a")
    assert token != anonymous_csrf_token("secret-1", "cookie-b")


def test_throttle_blocks_an_email_from_one_address_and_success_clears_it() -> None:
    throttle = LoginThrottle(max_failures=3, window_s=60)
    for _ in range(3):
        assert throttle.check("A@example.com", "10.0.0.1") == 0
        throttle.failed("a@example.com", "10.0.0.1")
    with pytest.raises(RateLimited) as caught:
        throttle.check("a@example.com", "10.0.0.1")
    assert caught.value.retry_after >= 1
    throttle.check("b@example.com", "10.0.0.1")  # other emails from the same address still may try
    throttle.succeeded("a@example.com", "10.0.0.1")
    assert throttle.check("a@example.com", "10.0.0.1") == 0


def test_nobody_can_lock_a_user_out_from_elsewhere() -> None:
    """An attacker's failures for someone's email slow that email down; they never lock its owner out."""
    throttle = LoginThrottle(max_failures=3, window_s=60, slow_s=1.5)
    for i in range(12):
        throttle.failed("victim@example.com", f"203.0.113.{i % 4}")
    with pytest.raises(RateLimited):
        throttle.check("victim@example.com", "203.0.113.1")
    assert throttle.check("victim@example.com", "198.51.100.7") == 1.5  # the owner: slowed, not refused
    throttle.succeeded("victim@example.com", "198.51.100.7")
    assert throttle.check("victim@example.com", "198.51.100.7") == 0


def test_throttle_blocks_an_address_trying_many_emails() -> None:
    throttle = LoginThrottle(max_failures=2, window_s=60, per_address_factor=3)
    for i in range(6):
        throttle.failed(f"user{i}@example.com", "10.0.0.9")
    with pytest.raises(RateLimited):
        throttle.check("fresh@example.com", "10.0.0.9")
    throttle.check("fresh@example.com", "10.0.0.10")


def test_throttle_forgets_failures_outside_the_window() -> None:
    throttle = LoginThrottle(max_failures=1, window_s=0.0)
    throttle.failed("a@example.com", "x")
    throttle.check("a@example.com", "x")


@pytest.mark.parametrize(("value", "expected"), [
    ("/console/keys", "/console/keys"), ("//evil.example", "/console"), ("https://evil.example", "/console"),
    ("/\\evil.example", "/console"), (None, "/console"), ("", "/console"),
])
def test_next_url_stays_on_this_site(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected
