"""Console languages: English and Simplified Chinese from JSON message catalogs.

Every user-facing string of the pages lives in ``apiinone/locales/{en,zh_CN}.json`` under a dotted
key; templates call ``_("key", name=value)``. A message about a number of things passes
``count=N``: languages with a singular (English) then use ``key.one`` when N is 1, so a price
reads "1 credit" and "2 credits"; Chinese has no plural forms and keeps only ``key``.

The language comes from ``?lang=`` (then remembered in a cookie), else that cookie, else
``Accept-Language``, else English.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

SUPPORTED_LANGS = ("en", "zh-CN")
DEFAULT_LANG = "en"
LANG_COOKIE = "aio_lang"
_CATALOG_FILES = {"en": "en.json", "zh-CN": "zh_CN.json"}
# Languages whose nouns take a singular form for exactly one (CLDR plural category "one").
LANGS_WITH_SINGULAR = frozenset({"en"})


@functools.cache
def catalogs() -> dict[str, dict[str, str]]:
    loaded = {}
    for lang, filename in _CATALOG_FILES.items():
        text = resources.files("apiinone").joinpath("locales", filename).read_text(encoding="utf-8")
        loaded[lang] = {str(k): str(v) for k, v in json.loads(text).items()}
    return loaded


def normalize_lang(value: str | None) -> str | None:
    """Map a tag such as ``zh``, ``zh_CN``, ``zh-Hans-CN`` or ``en-GB`` onto a supported language."""
    if not value:
        return None
    tag = value.strip().replace("_", "-").lower()
    if tag == "zh" or tag.startswith(("zh-cn", "zh-hans", "zh-sg")):
        return "zh-CN"
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def parse_accept_language(header: str | None) -> list[str]:
    """Supported languages in the order of the header's q-values (ties keep header order)."""
    if not header:
        return []
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        lang = normalize_lang(tag)
        if lang and quality > 0:
            weighted.append((-quality, index, lang))
    seen: list[str] = []
    for _q, _i, lang in sorted(weighted):
        if lang not in seen:
            seen.append(lang)
    return seen


@dataclass(frozen=True, slots=True)
class LangChoice:
    lang: str
    remember: bool  # chosen with ?lang= just now: set the cookie


def choose_lang(query: str | None, cookie: str | None, accept_language: str | None) -> LangChoice:
    chosen = normalize_lang(query)
    if chosen:
        return LangChoice(chosen, remember=chosen != cookie)
    from_cookie = normalize_lang(cookie)
    if from_cookie:
        return LangChoice(from_cookie, remember=False)
    preferred = parse_accept_language(accept_language)
    return LangChoice(preferred[0] if preferred else DEFAULT_LANG, remember=False)


class Translator:
    """``t("key", n=3)``: the message in this language, else English, else the key itself."""

    def __init__(self, lang: str) -> None:
        all_catalogs = catalogs()
        self.lang = lang if lang in all_catalogs else DEFAULT_LANG
        self._messages = all_catalogs[self.lang]
        self._fallback = all_catalogs[DEFAULT_LANG]

    def __call__(self, key: str, **values: object) -> str:
        if "count" in values and self.lang in LANGS_WITH_SINGULAR and is_one(values["count"]):
            key = f"{key}.one" if f"{key}.one" in self._messages else key
        text = self._messages.get(key) or self._fallback.get(key) or key
        return text.format(**values) if values else text

    def has(self, key: str) -> bool:
        return key in self._messages or key in self._fallback


def is_one(count: object) -> bool:
    """Exactly one, whether the amount is a number or already formatted ("1", not "1.5" or "0.000001")."""
    if isinstance(count, bool):
        return False
    if isinstance(count, int | float):
        return count == 1
    return str(count).strip() == "1"
