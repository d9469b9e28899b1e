"""The header reader agrees with Pillow on every image Pillow writes in the formats upstreams send,
and reads nothing out of bytes that are not one of them (the caller then asks Pillow)."""

from __future__ import annotations

from io import BytesIO

import pytest
from PIL import Image

from apiinone.kinds.image.header import image_header

SIZES = [(1, 1), (7, 3), (1024, 1024), (1536, 1024), (1024, 1536), (3000, 17), (16383, 2)]
VARIANTS = [
    ("PNG", "RGB", {}), ("PNG", "RGBA", {}), ("PNG", "L", {}), ("PNG", "P", {}), ("PNG", "RGB", {"optimize": True}),
    ("JPEG", "RGB", {}), ("JPEG", "L", {}), ("JPEG", "RGB", {"progressive": True}),
    ("JPEG", "RGB", {"exif": b"Exif\x00\x00" + b"\x00" * 64}), ("JPEG", "CMYK", {}),
    ("WEBP", "RGB", {}), ("WEBP", "RGB", {"lossless": True}), ("WEBP", "RGBA", {}),
    ("WEBP", "RGBA", {"lossless": True}),
]
TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def encoded(fmt: str, mode: str, size: tuple[int, int], options: dict[str, object]) -> bytes:
    out = BytesIO()
    Image.new(mode, size).save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "mode", "options"), VARIANTS)
def test_reads_what_pillow_reads(fmt: str, mode: str, options: dict[str, object]) -> None:
    for size in SIZES:
        if fmt == "WEBP" and max(size) > 16383:
            continue
        data = encoded(fmt, mode, size, options)
        with Image.open(BytesIO(data)) as img:
            expected = (TYPES[str(img.format)], *img.size)
        assert image_header(data) == expected, (fmt, mode, options, size)


def test_an_animated_webp_has_its_canvas_size() -> None:
    frames = [Image.new("RGB", (40, 30), color) for color in ("red", "blue")]
    out = BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:])
    assert image_header(out.getvalue()) == ("image/webp", 40, 30)


@pytest.mark.parametrize("data", [
    b"", b"\x89PNG", b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 20,
    b"\xff\xd8\xff\xe0\x00\x01", b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 20, b"GIF89a" + b"\x00" * 30,
    b"not an image at all, just text", bytes(range(256)),
])
def test_anything_else_is_left_to_pillow(data: bytes) -> None:
    assert image_header(data) is None


def test_a_truncated_header_is_never_misread() -> None:
    for fmt, mode, options in VARIANTS:
        data = encoded(fmt, mode, (640, 480), options)
        for cut in range(0, 64):
            assert image_header(data[:cut]) in (None, (TYPES[fmt], 640, 480))
