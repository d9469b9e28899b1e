"""Images: queued tasks priced per image by quality (``{"medium": 10, "high": 28}``)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from apiinone.domain.catalog import ModelSpec
from apiinone.domain.tasks import ASPECT_RATIOS, MAX_INPUT_URLS, MAX_PROMPT_CHARS, QUALITIES, Task
from apiinone.kinds.base import Finished, RunContext, RunOutcome, TaskFailure, require_price
from apiinone.kinds.image.job import GeneratedImage, ImageGenerator, ImageJob, ImageResult, InputImage
from apiinone.net.fetch import InputFetchError, fetch_input_image
from apiinone.storage import new_image_key
from apiinone.upstreams.base import RouteTarget, UpstreamError
from apiinone.upstreams.pool import Routed


class ImageKind:
    name = "image"
    queued = True
    create_path = "/api/v1/images/generations"

    def validate_pricing(self, spec: ModelSpec) -> None:
        if not spec.pricing:
            raise ValueError("an image model needs pricing by quality, e.g. {medium = 10, high = 28}")
        for quality, price in spec.pricing.items():
            if quality not in QUALITIES:
                raise ValueError(f"pricing key {quality!r} is not a quality ({', '.join(QUALITIES)})")
            require_price(price, f"pricing.{quality}", whole=True)

    def parameters_schema(self, spec: ModelSpec) -> dict[str, Any]:
        qualities = [q for q in QUALITIES if q in spec.pricing]
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["model", "prompt"],
            "properties": {
                "model": {"type": "string", "enum": [spec.id, *spec.aliases]},
                "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS,
                           "description": "Text description of the image to generate"},
                "aspect_ratio": {"type": "string", "enum": list(ASPECT_RATIOS), "default": "1:1",
                                 "description": 'Output aspect ratio: "1:1", "2:3", or "3:2"'},
                "quality": {"type": "string", "enum": qualities, "default": "medium",
                            "description": "Image quality: " + ", ".join(
                                f'"{q}" ({spec.pricing[q]} credits)' for q in qualities)},
                "input_urls": {"type": "array", "minItems": 1, "maxItems": MAX_INPUT_URLS,
                               "items": {"type": "string", "format": "uri"},
                               "description": "Array of image URLs for editing mode"},
                "callback_url": {"type": "string", "format": "uri",
                                 "description": "Webhook URL notified when the task ends"},
            },
        }

    def job_for(self, task: Task, inputs: list[InputImage], mask: InputImage | None, upstream_model: str) -> ImageJob:
        options: dict[str, Any] = task.input.get("options") or {}
        return ImageJob(
            prompt=task.input["prompt"], aspect_ratio=task.input["aspect_ratio"], quality=task.input["quality"],
            upstream_model=upstream_model, inputs=tuple(inputs), n=int(task.input.get("n", 1)),
            output_format=str(options.get("output_format", "png")), background=options.get("background"),
            user=options.get("user"), mask=mask,
            extra={k: str(options[k]) for k in ("moderation", "output_compression", "input_fidelity") if k in options},
        )

    async def run(self, ctx: RunContext, task: Task) -> RunOutcome:
        routed = await self.generate(ctx, task)
        stored = self.plan_storage(ctx, routed.value)
        await stored.put(ctx)
        offer = ctx.hooks.get("images")
        if offer is not None:
            offer(task.id, stored.by_url)  # before the finish wakes a synchronous waiter in this process
        return Finished(output=stored.output, route=routed.route)

    async def generate(self, ctx: RunContext, task: Task) -> Routed[ImageResult]:
        """Inputs fetched, then the upstream called over the model's routes (failover applies);
        raises TaskFailure. Nothing is stored yet: a synchronous route answers in parallel with that."""
        try:
            inputs, mask = await fetch_inputs(ctx, task.input)
        except InputFetchError as exc:
            raise TaskFailure("input_fetch_failed", exc.message) from None
        job = self.job_for(task, inputs, mask, ctx.spec.upstream_model)

        async def generate(adapter: ImageGenerator, target: RouteTarget) -> ImageResult:
            return await adapter.generate_images(target, job)

        try:
            async with asyncio.timeout(ctx.timeout_s):  # not wait_for: that runs the call in a task of its own
                return await ctx.pool.call(ctx.spec, generate)
        except TimeoutError:
            raise TaskFailure("timeout", "the model did not answer in time") from None
        except UpstreamError as exc:
            raise TaskFailure(exc.code, exc.message) from None

    def plan_storage(self, ctx: RunContext, result: ImageResult) -> StoredImages:
        """Where each image goes and the task output naming it, before any byte is written."""
        images: list[dict[str, Any]] = []
        by_url: dict[str, GeneratedImage] = {}
        keys: list[str] = []
        for image in result.images:
            key = new_image_key(image.content_type)
            url = ctx.file_url(key)
            images.append({"url": url, "width": image.width, "height": image.height,
                           "content_type": image.content_type})
            by_url[url] = image
            keys.append(key)
        output: dict[str, Any] = {"images": images}
        if result.usage:
            output["usage"] = result.usage
        return StoredImages(output=output, by_url=by_url, keys=tuple(keys))


@dataclass(frozen=True, slots=True)
class StoredImages:
    """A result's images, keyed for storage; ``put`` writes them (all at once)."""

    output: dict[str, Any]
    by_url: dict[str, GeneratedImage]
    keys: tuple[str, ...]

    async def put(self, ctx: RunContext) -> None:
        await asyncio.gather(*(ctx.storage.put(key, image.data, image.content_type)
                               for key, image in zip(self.keys, self.by_url.values(), strict=True)))

    async def discard(self, ctx: RunContext) -> None:
        """Best effort: images of an answer nobody is charged for are only wasted space."""
        for key in self.keys:
            with contextlib.suppress(Exception):
                await ctx.storage.delete(key)


async def fetch_inputs(ctx: RunContext, task_input: dict[str, Any]) -> tuple[list[InputImage], InputImage | None]:
    """The input images (URLs downloaded through the egress guard, then uploads the API already
    checked and stored) and the optional edit mask."""
    urls: list[str] = task_input.get("input_urls") or []
    inputs = list(await asyncio.gather(*(fetch_input_image(ctx.fetch_client, url) for url in urls)))
    mask = None
    for ref in task_input.get("input_files") or []:
        stored = await ctx.storage.get(ref["key"])
        if stored is None:
            raise InputFetchError("an uploaded input image is no longer in storage")
        image = InputImage(data=stored.data, content_type=stored.content_type, filename=ref["key"].rsplit("/", 1)[-1])
        if ref.get("role") == "mask":
            mask = image
        else:
            inputs.append(image)
    return inputs, mask


KIND = ImageKind()
