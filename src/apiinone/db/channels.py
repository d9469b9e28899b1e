"""Every PostgreSQL NOTIFY channel, named once. A NOTIFY is sent inside the unit of work that
made the change (delivered at commit, dropped on rollback); listeners are wired in bootstrap."""

from __future__ import annotations

TASKS_CHANNEL = "apiinone_tasks"
"""A task was queued or a capped model's slot freed: workers lease now rather than at their next poll."""

TASK_EVENTS_CHANNEL = "apiinone_task_events"
"""``"<status> <task id>"``: a task moved; event streams and synchronous waiters in other processes."""

WEBHOOKS_CHANNEL = "apiinone_webhooks"
"""A webhook delivery is due."""

KEYS_CHANNEL = "apiinone_keys"
"""An API key was revoked or an account disabled: drop it from every process's key cache."""

ROUTES_CHANNEL = "apiinone_routes"
"""An upstream route's breaker changed state: every process re-reads the shared route health."""

ALL_CHANNELS = (TASKS_CHANNEL, TASK_EVENTS_CHANNEL, WEBHOOKS_CHANNEL, KEYS_CHANNEL, ROUTES_CHANNEL)
