"""Pure parts of the usage and routes work: sealing keys, merging console routes with the file's,
the server-side charts."""

from __future__ import annotations

import re

import pytest

from apiinone.domain.catalog import RouteSpec
from apiinone.domain.routes import StoredRoute, key_hint, merge_routes, split_keys
from apiinone.sealing import SealError, SecretBox
from apiinone.web.charts import Bar, Share, _nice_max, bar_chart, share_bars


def stored(name: str, *, enabled: bool = True, keys: tuple[str, ...] = (), priority: int = 0,
           base_url: str | None = "http://127.0.0.1:1/v1") -> StoredRoute:
    return StoredRoute(id=f"rte_{name}", model_id="m", name=name, provider="openai", base_url=base_url,
                       upstream_model=None, priority=priority, weight=1, timeout_s=None, enabled=enabled,
                       key_hint=key_hint(keys), created_at=1, updated_at=1, keys=keys)


def test_sealed_keys_open_only_with_the_same_secret() -> None:
    box = SecretBox("secret-a")
    token = box.seal("sk-abc")
    assert "sk-abc" not in token and box.open(token) == "sk-abc"
    assert box.seal("sk-abc") != token, "a fresh IV every time"
    with pytest.raises(SealError):
        SecretBox("secret-b").open(token)
    with pytest.raises(SealError):
        box.open(token[:-4] + "AAAA")
    with pytest.raises(ValueError):
        SecretBox("")


def test_keys_are_split_and_hinted_by_their_last_four_characters() -> None:
    assert split_keys(" sk-1, sk-2\nsk-3 ") == ("sk-1", "sk-2", "sk-3")
    assert key_hint(("sk-aaaa1234", "sk-b")) == "1234+1"
    assert key_hint(()) is None
    assert "sk-secret" not in repr(stored("x", keys=("sk-secret",)))
    assert "sk-secret" not in repr(stored("x", keys=("sk-secret",)).to_spec())


def test_console_rows_replace_add_and_remove_file_routes() -> None:
    file_routes = (RouteSpec(name="main", provider="openai", api_key_env="MAIN_KEY", base_url="https://a/v1"),
                   RouteSpec(name="backup", provider="openai", api_key_env="BACKUP_KEY", priority=1))
    merged = merge_routes(file_routes, [stored("main", priority=3, base_url=None), stored("backup", enabled=False),
                                        stored("extra", keys=("sk-x",), priority=2), stored("off", enabled=False)])
    assert [(r.name, r.priority) for r in merged] == [("main", 3), ("extra", 2)]
    main, extra = merged
    assert main.api_key_env == "MAIN_KEY" and main.base_url == "https://a/v1" and main.stored, \
        "an edited file route keeps the file's key variable and base URL"
    assert extra.keys == ("sk-x",) and extra.api_key_env is None
    assert merge_routes(file_routes, []) == file_routes


def test_bar_chart_is_escaped_svg_with_one_title_per_bar() -> None:
    bars = [Bar("11-2<", (3.0, 1.0), "day <b>"), Bar("11-03", (0.0, 0.0), "empty")]
    svg = str(bar_chart(bars, label='a "chart"', part_classes=("part-0", "part-1"), testid="c"))
    assert svg.startswith('<svg class="chart"') and svg.endswith("</svg>")
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "11-2&lt;" in svg and "&#34;chart&#34;" in svg
    assert len(re.findall(r"<title>", svg)) == 2
    assert len(re.findall(r'<rect class="part-', svg)) == 2, "an empty day draws no rectangle"
    heights = [float(h) for h in re.findall(r'height="([0-9.]+)"', svg)]
    assert heights[0] == pytest.approx(3 * heights[1]), "stacked parts are proportional"
    assert "NaN" not in str(bar_chart([], label="x", part_classes=("part-0",), testid="e"))


def test_share_bars_are_longest_first_as_given_and_capped() -> None:
    svg = str(share_bars([Share(f"model-{i}", float(20 - i), f"{20 - i}") for i in range(15)], label="x",
                         testid="s", limit=10))
    assert len(re.findall(r"<rect", svg)) == 10 and "model-10" not in svg
    widths = [float(w) for w in re.findall(r'<rect class="part-0" x="0" y="0" width="([0-9.]+)"', svg)]
    assert widths[0] == 100 and widths == sorted(widths, reverse=True)
    assert "&lt;b&gt;" in str(share_bars([Share("<b>", 1.0, "1")], label="x", testid="s"))


@pytest.mark.parametrize(("value", "top"), [(0, 1), (0.3, 0.5), (1, 1), (7, 10), (12, 20), (240, 250), (999, 1000)])
def test_axis_tops_are_round(value: float, top: float) -> None:
    assert _nice_max(value) == pytest.approx(top)
