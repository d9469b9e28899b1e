"""The offline placeholder model: sizes, formats, determinism, colours and edit-mode collage."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image, ImageStat

from apiinone.kinds.image.job import ASPECT_SIZES, ImageJob, InputImage
from apiinone.upstreams.base import UpstreamError as ProviderError
from apiinone.upstreams.local_typeset.typeset import LocalTypesetProvider, _find_colors, _wrap


def job(prompt: str = "a quiet lake at dawn", **kw: object) -> ImageJob:
    params: dict[str, object] = {
        "aspect_ratio": "1:1",
        "quality": "medium",
        "upstream_model": "local-typeset",
    }
    params.update(kw)
    return ImageJob(prompt=prompt, **params)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def provider() -> LocalTypesetProvider:
    return LocalTypesetProvider()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (300, 200), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def test_name_and_honest_docstring() -> None:
    assert LocalTypesetProvider.provider == "local-typeset"
    assert "not an ai model" in (LocalTypesetProvider.__doc__ or "").lower()


@pytest.mark.parametrize("aspect", ["1:1", "2:3", "3:2"])
@pytest.mark.parametrize("quality", ["medium", "high"])
async def test_sizes_and_png(provider: LocalTypesetProvider, aspect: str, quality: str) -> None:
    result = await provider.generate(job(aspect_ratio=aspect, quality=quality))
    (img,) = result.images
    w, h = ASPECT_SIZES[aspect]
    assert (img.width, img.height) == (w, h)
    assert img.content_type == "image/png"
    assert img.data.startswith(b"\x89PNG\r\n\x1a\n")
    im = decode(img.data)
    assert im.format == "PNG"
    assert im.size == (w, h)


async def test_deterministic_for_same_prompt(provider: LocalTypesetProvider) -> None:
    a = await provider.generate(job("the same prompt twice"))
    b = await provider.generate(job("the same prompt twice"))
    c = await provider.generate(job("a different prompt"))
    assert a.images[0].data == b.images[0].data
    assert a.images[0].data != c.images[0].data


async def test_named_colours_drive_the_palette(provider: LocalTypesetProvider) -> None:
    red = ImageStat.Stat(
        decode((await provider.generate(job("a red sports car"))).images[0].data).convert("RGB")
    )
    blue = ImageStat.Stat(
        decode((await provider.generate(job("a blue sports car"))).images[0].data).convert("RGB")
    )
    r_mean, _, b_mean = red.mean
    assert r_mean > b_mean + 40
    r_mean, _, b_mean = blue.mean
    assert b_mean > r_mean + 40


def test_colour_words_english_and_chinese() -> None:
    assert _find_colors("Red and GOLD, then blue") == [(220, 38, 38), (212, 175, 55), (37, 99, 235)]
    assert _find_colors("一杯咖啡放在蓝色桌子上") == [(111, 78, 55), (37, 99, 235)]
    assert _find_colors("redundant bluetooth") == []  # whole words only


async def test_hue_of_red_prompt_in_chinese(provider: LocalTypesetProvider) -> None:
    im = decode((await provider.generate(job("红色的灯笼"))).images[0].data).convert("RGB")
    r, g, b = ImageStat.Stat(im).mean
    assert r > b + 40 and r > g + 20


async def test_edit_mode_composes_input(provider: LocalTypesetProvider) -> None:
    red_input = InputImage(data=png_bytes((250, 10, 10), (640, 480)), content_type="image/png")
    result = await provider.generate(job("make it blue", inputs=(red_input,)))
    im = decode(result.images[0].data).convert("RGB")
    assert im.size == (1024, 1024)
    # The upper part of the canvas is the (only) input image, untouched by the text band.
    region = im.crop((200, 150, 800, 450))
    r, g, b = ImageStat.Stat(region).mean
    assert r > 230 and g < 30 and b < 30


async def test_edit_mode_grid_of_several_inputs(provider: LocalTypesetProvider) -> None:
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10)]
    inputs = tuple(
        InputImage(data=png_bytes(c, fmt=fmt), content_type=f"image/{fmt.lower()}")
        for c, fmt in zip(colours, ["PNG", "JPEG", "WEBP", "PNG"], strict=True)
    )
    result = await provider.generate(job("collage", aspect_ratio="3:2", inputs=inputs))
    im = decode(result.images[0].data).convert("RGB")
    assert im.size == (1536, 1024)
    top_left = ImageStat.Stat(im.crop((100, 100, 300, 300))).mean
    assert top_left[0] > 200 and top_left[1] < 60


async def test_edit_mode_rejects_undecodable_input(provider: LocalTypesetProvider) -> None:
    bad = InputImage(data=b"definitely not an image", content_type="image/png")
    with pytest.raises(ProviderError) as err:
        await provider.generate(job("x", inputs=(bad,)))
    assert err.value.code == "invalid_input"


async def test_n_gives_distinct_images(provider: LocalTypesetProvider) -> None:
    result = await provider.generate(job("two of them", n=2))
    assert len(result.images) == 2
    assert result.images[0].data != result.images[1].data
    single = await provider.generate(job("two of them"))
    assert single.images[0].data == result.images[0].data  # index 0 is the n=1 image


@pytest.mark.parametrize(
    ("fmt", "ctype", "pil"), [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")]
)
async def test_other_output_formats(provider: LocalTypesetProvider, fmt: str, ctype: str, pil: str) -> None:
    result = await provider.generate(job("format check", aspect_ratio="2:3", output_format=fmt))
    (img,) = result.images
    assert img.content_type == ctype
    im = decode(img.data)
    assert im.format == pil
    assert im.size == (1024, 1536)


async def test_cjk_and_odd_prompts_do_not_crash(provider: LocalTypesetProvider) -> None:
    prompts = [
        "一只可爱的橘猫坐在蓝色的窗台上，阳光明媚。",
        "混合 mixed 文本 with an extraordinarilyunbreakablelongwordthatcannotfitononelineatall" * 3,
        "line one\n\n\n\nline two\ttabbed\x00nul",
        "x" * 5000,
        "🙂 emoji ✨",
    ]
    for prompt in prompts:
        result = await provider.generate(job(prompt, quality="high"))
        assert decode(result.images[0].data).size == (1024, 1024)


def test_wrap_breaks_cjk_and_long_words() -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=20)
    lines = _wrap("这是一个没有空格的很长很长很长很长很长很长的句子" * 3, font, 200)
    assert len(lines) > 1
    assert all(font.getlength(line) <= 200 + 25 for line in lines)  # closing marks may overhang
    lines = _wrap("a" * 200, font, 150)
    assert len(lines) > 1 and "".join(lines) == "a" * 200


async def test_rejects_bad_jobs(provider: LocalTypesetProvider) -> None:
    with pytest.raises(ProviderError):
        await provider.generate(job(aspect_ratio="16:9"))
    with pytest.raises(ProviderError):
        await provider.generate(job(output_format="gif"))
    with pytest.raises(ProviderError):
        await provider.generate(job(n=0))


async def test_does_not_block_the_event_loop(provider: LocalTypesetProvider) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    t = asyncio.create_task(ticker())
    await provider.generate(job("keep the loop responsive", quality="high", n=2))
    t.cancel()
    # Rendering takes ~0.2 s; run inline on the loop, the ticker could not have ticked meanwhile.
    assert ticks >= 3


async def test_aclose_is_a_noop(provider: LocalTypesetProvider) -> None:
    await provider.aclose()
    assert (await provider.generate(job("still works"))).images
