"""The console's message catalogs: both languages complete, every key a template uses exists, no
hard-coded prose in templates, and the language negotiation rules."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import pytest

from apiinone.domain.credits import LedgerKind
from apiinone.domain.tasks import TaskStatus
from apiinone.domain.webhooks import DeliveryStatus
from apiinone.web.i18n import Translator, catalogs, choose_lang, normalize_lang, parse_accept_language

TEMPLATES = Path(str(resources.files("apiinone").joinpath("web", "templates")))
ROUTES = Path(str(resources.files("apiinone").joinpath("web", "routes")))
LITERAL_KEY = re.compile(r"""_\(\s*["']([A-Za-z0-9_.\-]+)["']""")
JINJA = re.compile(r"{{.*?}}|{%.*?%}|{#.*?#}", re.S)
PROSE = re.compile(r"[A-Za-z\u4e00-\u9fff]{2,}")
URL_PATH = re.compile(r"/[\w/{}.\-]+")
TEXT_ATTRIBUTES = {"placeholder", "title", "alt", "aria-label", "data-confirm", "data-copied"}


def template_files() -> list[Path]:
    return sorted(TEMPLATES.rglob("*.html"))


def test_both_languages_have_the_same_keys() -> None:
    """Only the singular forms (``key.one``) are English's own: Chinese nouns have no plural."""
    en, zh = catalogs()["en"], catalogs()["zh-CN"]
    singulars = {k for k in en if k.endswith(".one")}
    assert sorted(set(en) - singulars) == sorted(zh)
    assert all(k.removesuffix(".one") in en for k in singulars)
    assert all(v.strip() for v in [*en.values(), *zh.values()])


@pytest.mark.parametrize(("count", "english"), [
    (1, "1 credit (~$0.01)"), ("1", "1 credit (~$0.01)"), (2, "2 credits (~$0.01)"), (0, "0 credits (~$0.01)"),
    ("0.5", "0.5 credits (~$0.01)"), ("1.5", "1.5 credits (~$0.01)"),
])
def test_counted_messages_take_the_singular_for_exactly_one(count: object, english: str) -> None:
    assert Translator("en")("playground.price", count=count, credits=count, usd="$0.01") == english
    assert Translator("zh-CN")("playground.price", count=count, credits=count, usd="$0.01") == f"{count} 积分(约 $0.01)"


def test_every_counted_template_message_has_its_singular() -> None:
    """A template that passes ``count=`` to a message gets "1 credit", never "1 credits"."""
    en = catalogs()["en"]
    counted = set()
    for path in template_files():
        counted |= set(re.findall(r"""_\(\s*["']([A-Za-z0-9_.\-]+)["']\s*,\s*count=""", path.read_text()))
    assert counted >= {"playground.price", "playground.available", "billing.pack.credits", "admin.codes.created"}
    assert all(f"{key}.one" in en for key in counted), sorted(k for k in counted if f"{k}.one" not in en)
    singular_prose = [k for k, v in en.items() if re.search(r"(?<![\d.])1 credits", v)]
    assert not singular_prose, singular_prose


def test_chinese_catalog_is_actually_chinese() -> None:
    zh = catalogs()["zh-CN"]
    chinese = [k for k, v in zh.items() if re.search(r"[\u4e00-\u9fff]", v)]
    assert len(chinese) > 0.8 * len(zh)


def test_every_literal_key_in_templates_and_routes_exists() -> None:
    en = catalogs()["en"]
    used: set[str] = set()
    for path in template_files():
        used |= set(LITERAL_KEY.findall(path.read_text(encoding="utf-8")))
    for path in ROUTES.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        used |= set(re.findall(r'"((?:error|flash|keys|time)\.[a-z_.]+)"', source))
        used |= {f"flash.{m}" for m in re.findall(r'done="([a-z_]+)"', source)}
    used = {k for k in used if not k.endswith((".", ".html"))}  # "status." ~ value: checked below
    missing = sorted(k for k in used if k not in en)
    assert not missing, missing


@pytest.mark.parametrize(("family", "values"), [
    ("status", [s.value for s in TaskStatus]),
    ("ledger", [k.value for k in LedgerKind]),
    ("delivery", [s.value for s in DeliveryStatus]),
    ("order", ["pending", "paid", "canceled"]),
    ("node", ["up", "down", "stopped"]),
    ("quality", ["medium", "high"]),
    ("type", ["image", "chat", "video", "audio", "tool"]),
])
def test_keys_built_from_values_exist(family: str, values: list[str]) -> None:
    for lang in ("en", "zh-CN"):
        for value in values:
            assert f"{family}.{value}" in catalogs()[lang]


class _TextCollector(HTMLParser):
    """Visible text and text-bearing attributes outside <pre>/<code>/<script>/<style>."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = 0
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("pre", "code", "script", "style", "textarea"):
            self.skip += 1
        for name, value in attrs:
            if name in TEXT_ATTRIBUTES and value:
                self.found.append(value)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("pre", "code", "script", "style", "textarea") and self.skip:
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.found.append(data)


@pytest.mark.parametrize("path", template_files(), ids=lambda p: str(p.relative_to(TEMPLATES)))
def test_templates_have_no_hard_coded_prose(path: Path) -> None:
    source = JINJA.sub(" ", path.read_text(encoding="utf-8"))
    collector = _TextCollector()
    collector.feed(source)
    words = [w for text in collector.found for w in PROSE.findall(URL_PATH.sub(" ", text))]
    assert not words, f"{path.name}: text outside the catalogs: {words}"


def test_the_prose_check_catches_hard_coded_text() -> None:
    collector = _TextCollector()
    collector.feed(JINJA.sub(" ", '<p>{{ _("x") }} Click here</p><input placeholder="Your name"><code>curl</code>'))
    assert [w for t in collector.found for w in PROSE.findall(t)] == ["Click", "here", "Your", "name"]


@pytest.mark.parametrize(("tag", "expected"), [
    ("zh", "zh-CN"), ("zh-CN", "zh-CN"), ("zh_CN", "zh-CN"), ("zh-Hans-CN", "zh-CN"), ("en", "en"),
    ("en-GB", "en"), ("fr", None), ("", None), (None, None),
])
def test_normalize_lang(tag: str | None, expected: str | None) -> None:
    assert normalize_lang(tag) == expected


def test_accept_language_order_follows_q_values() -> None:
    assert parse_accept_language("fr;q=1, en;q=0.5, zh-CN;q=0.8") == ["zh-CN", "en"]
    assert parse_accept_language("en-US,en;q=0.9,zh;q=0.8") == ["en", "zh-CN"]
    assert parse_accept_language("zh;q=0") == []


def test_query_beats_cookie_beats_header() -> None:
    assert choose_lang("zh-CN", "en", "en").lang == "zh-CN"
    assert choose_lang("zh-CN", "en", "en").remember
    assert not choose_lang("zh-CN", "zh-CN", "en").remember
    assert choose_lang(None, "zh-CN", "en").lang == "zh-CN"
    assert choose_lang(None, None, "zh-CN,zh;q=0.9").lang == "zh-CN"
    assert choose_lang("xx", None, None).lang == "en"


def test_translator_formats_and_falls_back() -> None:
    zh = Translator("zh-CN")
    assert zh("billing.pack.credits", n=500) == "500 积分"
    assert Translator("en")("billing.pack.credits", n=500) == "500 credits"
    assert zh("no.such.key") == "no.such.key"
    assert Translator("de").lang == "en"
