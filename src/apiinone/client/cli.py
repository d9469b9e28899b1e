"""``apiinone generate``: one image from the command line, through a running server, with a live
progress line (rich, on stderr) and the saved file's path on stdout."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from apiinone.client._errors import ApiinoneError, TaskFailedError
from apiinone.client._models import TaskEvent
from apiinone.client._sync import Client

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def run_generate(prompt: str, *, model: str, aspect_ratio: str, quality: str, output: str | None,
                 base_url: str | None, api_key: str | None, timeout: float) -> int:
    """Returns the exit status: 0 saved, 1 the API or the task failed, 2 not configured."""
    console = Console(stderr=True)
    try:
        client = Client(base_url, api_key)
    except ApiinoneError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with client, Progress(*columns, console=console) as progress:
        line = progress.add_task(f"submitting to {client.config.base_url}", total=None)
        try:
            task = client.images.generate(prompt, model=model, aspect_ratio=aspect_ratio, quality=quality)
            label = f"{task.task_id} ({task.model}, {task.price} credits)"

            def show(event: TaskEvent) -> None:
                where = f" on {event.data['node']}" if event.data.get("node") else ""
                progress.update(line, description=f"{label}: {event.event}{where}")

            done = task.wait(timeout=timeout, on_event=show)
            image = done.images[0]
            target = Path(output or f"{done.task_id}.{_EXTENSIONS.get(image.content_type, 'img')}")
            progress.update(line, description=f"{label}: downloading {image.width}x{image.height}")
            done.save(target)
            progress.update(line, description=f"{label}: saved {target}", completed=1, total=1)
        except TaskFailedError as exc:
            console.print(f"[red]task failed:[/red] {exc}")
            return 1
        except ApiinoneError as exc:
            console.print(f"[red]error:[/red] {exc}")
            return 1
    print(target)
    return 0
