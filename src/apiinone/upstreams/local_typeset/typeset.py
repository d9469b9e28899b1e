"""``local-typeset``: the embedded offline placeholder image model.

This is NOT an AI model. It typesets the prompt onto a gradient whose colours come from the prompt
(named colour words first, a hash of the prompt otherwise) and, in edit mode, lays the input
images out as a collage under a translucent text band. It exists so that a fresh install, the
tests and the dashboard playground work end to end with no upstream key, no network and no GPU,
and it says so in a footer on every image so nobody mistakes its output for a real model's.
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import io
import math
import random
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from apiinone.kinds.image.job import (
    ASPECT_SIZES,
    GeneratedImage,
    ImageJob,
    ImageResult,
    InputImage,
)
from apiinone.upstreams.base import RouteTarget, UpstreamError

__all__ = ["COLOR_WORDS", "LocalTypesetProvider"]

RGB = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

FOOTER_TEXT = "local-typeset · not an AI model"
MAX_IMAGES = 10
# Only this much of a (up to 5000 character) prompt is typeset: more would not be readable anyway,
# and it bounds the layout work.
MAX_DRAWN_CHARS = 1200

_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

# English words are matched as whole words, Chinese ones as substrings (longest first).
COLOR_WORDS: dict[str, RGB] = {
    "red": (220, 38, 38),
    "crimson": (178, 24, 56),
    "scarlet": (230, 40, 25),
    "maroon": (128, 0, 32),
    "orange": (249, 115, 22),
    "amber": (245, 158, 11),
    "yellow": (250, 204, 21),
    "gold": (212, 175, 55),
    "golden": (212, 175, 55),
    "lime": (132, 204, 22),
    "green": (22, 163, 74),
    "olive": (107, 112, 40),
    "mint": (152, 230, 190),
    "teal": (13, 148, 136),
    "cyan": (6, 182, 212),
    "turquoise": (64, 224, 208),
    "sky": (56, 189, 248),
    "blue": (37, 99, 235),
    "navy": (20, 33, 90),
    "indigo": (79, 70, 229),
    "purple": (147, 51, 234),
    "violet": (139, 92, 246),
    "lavender": (190, 170, 240),
    "magenta": (217, 70, 239),
    "pink": (236, 72, 153),
    "rose": (244, 63, 94),
    "coral": (255, 127, 80),
    "peach": (255, 190, 150),
    "brown": (120, 72, 40),
    "coffee": (111, 78, 55),
    "chocolate": (90, 56, 37),
    "beige": (230, 215, 185),
    "cream": (250, 240, 215),
    "black": (12, 12, 14),
    "white": (248, 248, 246),
    "gray": (128, 128, 132),
    "grey": (128, 128, 132),
    "silver": (192, 192, 200),
    "charcoal": (54, 54, 60),
    # Simplified and traditional Chinese.
    "红": (220, 38, 38),
    "紅": (220, 38, 38),
    "橙": (249, 115, 22),
    "橘": (249, 115, 22),
    "黄": (250, 204, 21),
    "黃": (250, 204, 21),
    "金": (212, 175, 55),
    "绿": (22, 163, 74),
    "綠": (22, 163, 74),
    "青": (6, 182, 212),
    "蓝": (37, 99, 235),
    "藍": (37, 99, 235),
    "天蓝": (56, 189, 248),
    "天藍": (56, 189, 248),
    "藏青": (20, 33, 90),
    "紫": (147, 51, 234),
    "粉": (236, 72, 153),
    "玫瑰": (244, 63, 94),
    "珊瑚": (255, 127, 80),
    "棕": (120, 72, 40),
    "褐": (120, 72, 40),
    "咖啡": (111, 78, 55),
    "米色": (230, 215, 185),
    "黑": (12, 12, 14),
    "白": (248, 248, 246),
    "灰": (128, 128, 132),
    "银": (192, 192, 200),
    "銀": (192, 192, 200),
}

_EN_COLOR_RE = re.compile(
    r"\b(" + "|".join(sorted((w for w in COLOR_WORDS if w.isascii()), key=len, reverse=True)) + r")\b"
)
_CJK_COLOR_WORDS = sorted((w for w in COLOR_WORDS if not w.isascii()), key=len, reverse=True)

_LATIN_FONT_CANDIDATES: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 0),
    ("/usr/share/fonts/dejavu/DejaVuSans.ttf", 0),
    ("/usr/share/fonts/TTF/DejaVuSans.ttf", 0),
    ("/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf", 0),
    ("/usr/local/share/fonts/DejaVuSans.ttf", 0),
    ("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf", 0),
    ("/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf", 0),
    ("/System/Library/Fonts/Supplemental/Arial.ttf", 0),
)
# Index 2 of the Noto CJK collections is the Simplified Chinese face; a wrong index falls back to 0.
_CJK_FONT_CANDIDATES: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/google-noto-sans-cjk-fonts/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSansCJKsc-Regular.otf", 0),
    ("/usr/share/fonts/opentype/noto/NotoSansSC-Regular.otf", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/wenquanyi/wqy-microhei/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0),
    ("/usr/share/fonts/truetype/arphic/uming.ttc", 0),
    ("/System/Library/Fonts/PingFang.ttc", 0),
    ("/System/Library/Fonts/STHeiti Medium.ttc", 0),
)
# Fonts shipped inside the package (``apiinone/fonts``) win over system ones when present.
_BUNDLED_FONT_DIR = Path(__file__).resolve().parent.parent / "fonts"


def _is_cjk(ch: str) -> bool:
    """Characters that are laid out one by one (no spaces between words) and need a CJK font."""
    o = ord(ch)
    return (
        0x2E80 <= o <= 0x9FFF  # radicals, kana, CJK symbols and unified ideographs
        or 0xAC00 <= o <= 0xD7AF  # Hangul syllables
        or 0xF900 <= o <= 0xFAFF  # compatibility ideographs
        or 0xFF00 <= o <= 0xFFEF  # full-width forms
        or 0x20000 <= o <= 0x3FFFF  # extension planes
    )


_NO_LINE_START = set("，。、；：！？）》」』】〕〉,.;:!?)]}…")


def _has_glyph(font: ImageFont.FreeTypeFont, ch: str) -> bool:
    """Whether ``font`` draws ``ch`` itself rather than its "missing glyph" box."""
    missing = "\U0010fffd"  # a private-use code point no text font maps
    return (font.getbbox(ch), font.getlength(ch)) != (font.getbbox(missing), font.getlength(missing))


def _discover_fonts() -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """Finds a Latin and a CJK TrueType font once, so each render does no filesystem probing."""
    latin: list[tuple[str, int]] = []
    cjk: list[tuple[str, int]] = []
    if _BUNDLED_FONT_DIR.is_dir():
        for p in sorted(_BUNDLED_FONT_DIR.iterdir()):
            if p.suffix.lower() not in {".ttf", ".otf", ".ttc"}:
                continue
            try:
                probe = ImageFont.truetype(str(p), 24)
            except OSError:
                continue
            (cjk if _has_glyph(probe, "中") else latin).append((str(p), 0))
    latin.extend(_LATIN_FONT_CANDIDATES)
    cjk.extend(_CJK_FONT_CANDIDATES)

    def first(cands: Sequence[tuple[str, int]]) -> tuple[str, int] | None:
        for path, index in cands:
            if not Path(path).is_file():
                continue
            for idx in dict.fromkeys((index, 0)):
                try:
                    ImageFont.truetype(path, 12, index=idx)
                except OSError:
                    continue
                return (path, idx)
        return None

    return first(latin), first(cjk)


_font_cache = threading.local()


def _load_font(spec: tuple[str, int] | None, size: int) -> Font:
    """A font at ``size``, cached per thread (FreeType faces are not shared across threads)."""
    cache: dict[tuple[tuple[str, int] | None, int], Font] | None = getattr(_font_cache, "fonts", None)
    if cache is None:
        cache = {}
        _font_cache.fonts = cache
    key = (spec, size)
    font = cache.get(key)
    if font is None:
        if spec is not None:
            try:
                font = ImageFont.truetype(spec[0], size, index=spec[1])
            except OSError:
                font = ImageFont.load_default(size=size)
        else:
            font = ImageFont.load_default(size=size)
        if len(cache) > 256:
            cache.clear()
        cache[key] = font
    return font


# --------------------------------------------------------------------------- colours


def _find_colors(prompt: str) -> list[RGB]:
    """Named colours in the order the prompt mentions them, without repeats."""
    found: list[tuple[int, RGB]] = [
        (m.start(), COLOR_WORDS[m.group(1)]) for m in _EN_COLOR_RE.finditer(prompt.lower())
    ]
    taken = [False] * len(prompt)
    for word in _CJK_COLOR_WORDS:
        start = prompt.find(word)
        while start != -1:
            end = start + len(word)
            if not any(taken[start:end]):
                found.append((start, COLOR_WORDS[word]))
                for i in range(start, end):
                    taken[i] = True
            start = prompt.find(word, end)
    found.sort(key=lambda item: item[0])
    out: list[RGB] = []
    for _, rgb in found:
        if rgb not in out:
            out.append(rgb)
    return out


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, max(0.0, min(1.0, s)), max(0.0, min(1.0, v)))
    return (round(r * 255), round(g * 255), round(b * 255))


def _shift(rgb: RGB, dh: float = 0.0, sv: float = 1.0, vv: float = 1.0) -> RGB:
    h, s, v = colorsys.rgb_to_hsv(rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)
    return _hsv(h + dh, s * sv, v * vv)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (round(a[0] + (b[0] - a[0]) * t), round(a[1] + (b[1] - a[1]) * t), round(a[2] + (b[2] - a[2]) * t))


def _luma(rgb: RGB) -> float:
    return (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255


def _palette(prompt: str, digest: bytes, index: int) -> list[RGB]:
    """Two or three gradient stops: named colours if any, else colours derived from the hash."""
    named = _find_colors(prompt)
    jitter = (digest[6] / 255 - 0.5) * 0.08
    if len(named) >= 2:
        stops = named[:3]
    elif len(named) == 1:
        base = named[0]
        # Stay in the colour's family so "red" still reads as red: a neighbouring hue, darker
        # (or lighter for near-black).
        if _luma(base) < 0.15:
            stops = [base, _mix(base, (90, 90, 100), 0.6)]
        else:
            stops = [base, _shift(base, dh=0.04 + jitter, vv=0.55)]
    else:
        h = int.from_bytes(digest[:2], "big") / 65535
        s = 0.45 + digest[2] / 255 * 0.4
        v = 0.55 + digest[3] / 255 * 0.35
        stops = [_hsv(h, s, v), _hsv(h + 0.08 + digest[4] / 255 * 0.25, s * 0.9, v * 0.6)]
    if index:
        # Siblings of one request differ slightly: a small hue step per image.
        step = 0.045 * index * (1 if digest[7] % 2 else -1)
        stops = [_shift(c, dh=step) for c in stops]
    return stops


def _gradient(size: tuple[int, int], stops: Sequence[RGB], angle: float) -> Image.Image:
    """A linear multi-stop gradient, computed on a small grid and upscaled (cheap and smooth)."""
    w, h = size
    gw = 32
    gh = max(2, round(gw * h / w))
    aspect = h / w
    dx, dy = math.cos(angle), math.sin(angle) * aspect
    corners = [(-0.5 * dx) + (-0.5 * dy), 0.5 * dx - 0.5 * dy, -0.5 * dx + 0.5 * dy, 0.5 * dx + 0.5 * dy]
    tmin, tmax = min(corners), max(corners)
    span = (tmax - tmin) or 1.0
    segments = len(stops) - 1
    buf = bytearray()
    for y in range(gh):
        fy = y / (gh - 1) - 0.5
        for x in range(gw):
            fx = x / (gw - 1) - 0.5
            t = ((fx * dx + fy * dy) - tmin) / span
            pos = t * segments
            i = min(int(pos), segments - 1)
            buf.extend(_mix(stops[i], stops[i + 1], pos - i))
    small = Image.frombytes("RGB", (gw, gh), bytes(buf))
    return small.resize((w, h), Image.Resampling.BILINEAR)


# --------------------------------------------------------------------------- text layout


def _clean_prompt(prompt: str) -> str:
    text = "".join(
        ch if ch == "\n" or unicodedata.category(ch)[0] != "C" else " " for ch in prompt.replace("\r\n", "\n")
    )
    paragraphs = [" ".join(p.split()) for p in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(paragraphs)).strip()
    if len(text) > MAX_DRAWN_CHARS:
        text = text[: MAX_DRAWN_CHARS - 1].rstrip() + "…"
    return text


def _tokens(paragraph: str) -> list[tuple[str, bool]]:
    """Splits into words and single CJK characters; the flag says whether a space precedes it."""
    out: list[tuple[str, bool]] = []
    word = ""
    space = False
    for ch in paragraph:
        if ch == " ":
            if word:
                out.append((word, space))
                word = ""
            space = True
        elif _is_cjk(ch):
            if word:
                out.append((word, space))
                word = ""
                space = False
            out.append((ch, space))
            space = False
        else:
            word += ch
    if word:
        out.append((word, space))
    return out


def _break_word(word: str, font: Font, max_w: float) -> list[str]:
    """Splits a word wider than a line into line-sized pieces."""
    pieces: list[str] = []
    piece = ""
    for ch in word:
        if piece and font.getlength(piece + ch) > max_w:
            pieces.append(piece)
            piece = ""
        piece += ch
    pieces.append(piece)
    return pieces


def _wrap(text: str, font: Font, max_w: float) -> list[str]:
    """Greedy wrapping that breaks between words and between any two CJK characters.

    Line widths are summed from cached word widths (kerning across a space is negligible), which
    keeps the size search cheap for long prompts.
    """
    widths: dict[str, float] = {}

    def width(s: str) -> float:
        w = widths.get(s)
        if w is None:
            w = widths[s] = font.getlength(s)
        return w

    space_w = width(" ")
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line, line_w = "", 0.0
        for tok, space in _tokens(paragraph):
            sep = bool(line and space)
            tok_w = width(tok)
            cand_w = line_w + (space_w if sep else 0.0) + tok_w
            # A closing mark may overhang the line rather than start the next one.
            if cand_w <= max_w or (line and tok in _NO_LINE_START):
                line += (" " if sep else "") + tok
                line_w = cand_w
                continue
            if line:
                lines.append(line)
            pieces = [tok] if tok_w <= max_w else _break_word(tok, font, max_w)
            lines.extend(pieces[:-1])
            line = pieces[-1]
            line_w = width(line)
        lines.append(line)
    return lines


def _line_height(font: Font, size: int) -> int:
    if isinstance(font, ImageFont.FreeTypeFont):
        ascent, descent = font.getmetrics()
        return max(1, round((ascent + descent) * 1.12))
    return max(1, round(size * 1.3))


@dataclass(slots=True)
class _TextBlock:
    lines: list[str]
    font: Font
    line_h: int
    size: int

    @property
    def height(self) -> int:
        return self.line_h * len(self.lines)


def _fit_text(
    text: str, spec: tuple[str, int] | None, box: tuple[int, int], max_size: int, min_size: int
) -> _TextBlock:
    """The largest font size whose wrapped text fits ``box``; at the smallest size it is cut off."""
    sizes: list[int] = []
    s = float(min_size)
    while s < max_size:
        sizes.append(round(s))
        s *= 1.08
    sizes.append(max_size)
    sizes = sorted(set(sizes))
    box_w, box_h = box

    def layout(size: int) -> _TextBlock:
        font = _load_font(spec, size)
        return _TextBlock(_wrap(text, font, box_w), font, _line_height(font, size), size)

    lo, hi = 0, len(sizes) - 1
    best: _TextBlock | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        block = layout(sizes[mid])
        if block.height <= box_h:
            best = block
            lo = mid + 1
        else:
            hi = mid - 1
    if best is not None:
        return best
    block = layout(sizes[0])
    keep = max(1, box_h // block.line_h)
    if len(block.lines) > keep:
        lines = block.lines[:keep]
        last = lines[-1]
        while last and block.font.getlength(last + "…") > box_w:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
        block.lines = lines
    return block


def _draw_block(
    draw: ImageDraw.ImageDraw,
    block: _TextBlock,
    center_x: int,
    top: int,
    fill: tuple[int, int, int, int],
    shadow: tuple[int, int, int, int] | None,
) -> None:
    offset = max(1, block.size // 22)
    for i, line in enumerate(block.lines):
        if not line:
            continue
        width = block.font.getlength(line)
        x = round(center_x - width / 2)
        y = top + i * block.line_h
        if shadow is not None:
            draw.text((x + offset, y + offset), line, font=block.font, fill=shadow)
        draw.text((x, y), line, font=block.font, fill=fill)


# --------------------------------------------------------------------------- rendering


def _decode(item: InputImage, index: int, cell: tuple[int, int]) -> Image.Image:
    """Decodes one input (PNG/JPEG/WebP only, first frame, EXIF-rotated) to RGB or RGBA."""
    try:
        with Image.open(io.BytesIO(item.data), formats=["PNG", "JPEG", "WEBP"]) as im:
            if im.format == "JPEG":
                im.draft("RGB", cell)  # big JPEGs decode at a reduced scale, still >= the cell
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            has_alpha = "A" in im.getbands() or "transparency" in im.info
            if has_alpha:
                return im.convert("RGBA") if im.mode != "RGBA" else im.copy()
            return im.convert("RGB") if im.mode != "RGB" else im.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UpstreamError(
            f"input image {index + 1} could not be decoded: {exc}", code="invalid_input"
        ) from exc


def _collage_gap(size: tuple[int, int]) -> int:
    return max(2, round(min(size) * 0.012))


def _prepare_tiles(
    inputs: Sequence[InputImage], size: tuple[int, int], resample: Image.Resampling
) -> list[tuple[Image.Image, tuple[int, int]]]:
    """Decodes and fits every input into its collage cell once per job (shared by all ``n``)."""
    gap = _collage_gap(size)
    tiles: list[tuple[Image.Image, tuple[int, int]]] = []
    for i, (item, (x, y, cw, ch)) in enumerate(zip(inputs, _grid(len(inputs), size, gap, gap), strict=True)):
        tiles.append((_cover(_decode(item, i, (cw, ch)), (cw, ch), resample), (x, y)))
    return tiles


def _cover(im: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """Scales and centre-crops ``im`` to fill ``size`` exactly."""
    w, h = size
    src_w, src_h = im.size
    scale = max(w / src_w, h / src_h)
    crop_w, crop_h = w / scale, h / scale
    left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
    return im.resize(size, resample, box=(left, top, left + crop_w, top + crop_h), reducing_gap=2.0)


def _grid(count: int, size: tuple[int, int], margin: int, gap: int) -> list[tuple[int, int, int, int]]:
    """Cell boxes (x, y, w, h) of a collage, with a short last row centred."""
    w, h = size
    cols = max(1, min(count, math.ceil(math.sqrt(count * w / h))))
    rows = math.ceil(count / cols)
    cols = math.ceil(count / rows)
    cell_w = (w - 2 * margin - (cols - 1) * gap) // cols
    cell_h = (h - 2 * margin - (rows - 1) * gap) // rows
    boxes: list[tuple[int, int, int, int]] = []
    for r in range(rows):
        in_row = min(cols, count - r * cols)
        row_w = in_row * cell_w + (in_row - 1) * gap
        x0 = (w - row_w) // 2
        for c in range(in_row):
            boxes.append((x0 + c * (cell_w + gap), margin + r * (cell_h + gap), cell_w, cell_h))
    return boxes


@dataclass(frozen=True, slots=True)
class _Fonts:
    latin: tuple[str, int] | None
    cjk: tuple[str, int] | None


def _render(
    job: ImageJob,
    index: int,
    fonts: _Fonts,
    tiles: Sequence[tuple[Image.Image, tuple[int, int]]],
    scale: int,
) -> Image.Image:
    """Draws one image at ``scale`` times the output size (the caller downsamples)."""
    out_w, out_h = job.size
    w, h = out_w * scale, out_h * scale
    short = min(w, h)
    digest = hashlib.sha256(job.prompt.encode("utf-8")).digest()
    rng = random.Random(f"{digest.hex()}:{index}")
    stops = _palette(job.prompt, digest, index)
    angle = digest[5] / 255 * math.tau + index * 0.35
    canvas = _gradient((w, h), stops, angle)
    draw = ImageDraw.Draw(canvas, "RGBA")  # RGBA ink is blended into the RGB canvas
    text = _clean_prompt(job.prompt)
    spec = fonts.cjk if (fonts.cjk is not None and any(_is_cjk(c) for c in text)) else fonts.latin
    margin = round(short * 0.05)
    footer_size = max(10, round(short * 0.022))
    footer_font = _load_font(fonts.latin, footer_size)
    footer_h = _line_height(footer_font, footer_size)

    if tiles:
        for tile, pos in tiles:
            canvas.paste(tile, pos, tile if tile.mode == "RGBA" else None)
        pad = round(short * 0.03)
        block = _fit_text(
            text,
            spec,
            (w - 2 * margin, round(h * 0.3)),
            max_size=round(short * 0.07),
            min_size=max(12, 9 * scale),
        )
        band_h = block.height + 2 * pad + footer_h + pad // 2
        band_top = h - band_h
        band = _shift(stops[0], sv=0.8, vv=0.35 if _luma(stops[0]) > 0.2 else 1.0)
        draw.rectangle((0, band_top, w, h), fill=(*band, 178))
        _draw_block(draw, block, w // 2, band_top + pad, (255, 255, 255, 255), (0, 0, 0, 110))
        footer_fill: tuple[int, int, int, int] = (255, 255, 255, 170)
    else:
        # Soft discs and rings for a poster-like background; they vary per image index.
        for _ in range(rng.randint(4, 7)):
            r = rng.uniform(0.08, 0.42) * short
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            tint = rng.choice([(255, 255, 255), stops[-1], stops[0]])
            if rng.random() < 0.6:
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*tint, rng.randint(18, 46)))
            else:
                draw.ellipse(
                    (cx - r, cy - r, cx + r, cy + r),
                    outline=(*tint, rng.randint(40, 80)),
                    width=max(1, round(short * 0.006)),
                )
        frame = round(short * 0.025)
        draw.rectangle((frame, frame, w - frame, h - frame), outline=(255, 255, 255, 70), width=max(1, scale))
        mean = _mix(stops[0], stops[-1], 0.5)
        light_text = _luma(mean) < 0.6
        block = _fit_text(
            text,
            spec,
            (round(w * 0.78), round((h - 2 * margin - footer_h) * 0.7)),
            max_size=round(short * 0.12),
            min_size=max(12, 9 * scale),
        )
        widest = max((block.font.getlength(line) for line in block.lines), default=0.0)
        pad = round(short * 0.035)
        top = (h - footer_h - block.height) // 2
        panel = (0, 0, 0, 84) if light_text else (255, 255, 255, 110)
        draw.rounded_rectangle(
            (w / 2 - widest / 2 - pad, top - pad, w / 2 + widest / 2 + pad, top + block.height + pad),
            radius=pad,
            fill=panel,
        )
        fill = (250, 250, 250, 255) if light_text else (22, 22, 28, 255)
        shadow = (0, 0, 0, 100) if light_text else (255, 255, 255, 110)
        _draw_block(draw, block, w // 2, top, fill, shadow)
        footer_fill = (255, 255, 255, 190) if light_text else (20, 20, 26, 190)

    footer_w = footer_font.getlength(FOOTER_TEXT)
    draw.text(
        (round((w - footer_w) / 2), h - footer_h - round(short * 0.018)),
        FOOTER_TEXT,
        font=footer_font,
        fill=footer_fill,
    )
    if scale > 1:
        canvas = canvas.resize((out_w, out_h), Image.Resampling.LANCZOS, reducing_gap=None)
    return canvas


def _encode(im: Image.Image, fmt: str, high: bool) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, "PNG", compress_level=3 if high else 1)
    elif fmt == "jpeg":
        im.save(buf, "JPEG", quality=94 if high else 88)
    else:
        im.save(buf, "WEBP", quality=92 if high else 85, method=4 if high else 2)
    return buf.getvalue()


def _run_job(job: ImageJob, fonts: _Fonts) -> tuple[GeneratedImage, ...]:
    """Everything CPU-bound for one job; runs in a worker thread."""
    high = job.quality == "high"
    scale = 2 if high else 1
    w, h = job.size
    tiles: list[tuple[Image.Image, tuple[int, int]]] = []
    if job.inputs:
        resample = Image.Resampling.LANCZOS if high else Image.Resampling.BILINEAR
        tiles = _prepare_tiles(job.inputs, (w * scale, h * scale), resample)
    content_type = _CONTENT_TYPES[job.output_format]
    images: list[GeneratedImage] = []
    for index in range(job.n):
        data = _encode(_render(job, index, fonts, tiles, scale), job.output_format, high)
        images.append(GeneratedImage(data=data, content_type=content_type, width=w, height=h))
    return tuple(images)


class LocalTypesetProvider:
    """Offline placeholder "model": typesets the prompt with Pillow. Not an AI model.

    Used for the ``local-typeset`` catalog entry so everything works with no upstream; output is
    deterministic for a prompt (tests can rely on it). ``quality="high"`` renders at twice the
    size and downsamples with Lanczos (anti-aliased shapes and text); anything else is medium.
    """

    provider = "local-typeset"
    needs_key = False

    def __init__(self, *, font_path: Path | None = None, cjk_font_path: Path | None = None) -> None:
        latin, cjk = _discover_fonts()
        self._fonts = _Fonts(
            latin=(str(font_path), 0) if font_path is not None else latin,
            cjk=(str(cjk_font_path), 0) if cjk_font_path is not None else cjk,
        )

    @property
    def has_cjk_font(self) -> bool:
        """Whether CJK prompts render real glyphs (otherwise they show as boxes)."""
        return self._fonts.cjk is not None

    async def generate(self, job: ImageJob) -> ImageResult:
        if job.aspect_ratio not in ASPECT_SIZES:
            raise UpstreamError(f"unsupported aspect ratio {job.aspect_ratio!r}", code="invalid_parameter")
        if job.output_format not in _PIL_FORMATS:
            raise UpstreamError(f"unsupported output format {job.output_format!r}", code="invalid_parameter")
        if not 1 <= job.n <= MAX_IMAGES:
            raise UpstreamError(f"n must be between 1 and {MAX_IMAGES}", code="invalid_parameter")
        images = await asyncio.to_thread(_run_job, job, self._fonts)
        return ImageResult(images=images)

    async def generate_images(self, target: RouteTarget, job: ImageJob) -> ImageResult:
        return await self.generate(job)

    async def aclose(self) -> None:
        """Nothing to release: no connections, no background tasks."""
