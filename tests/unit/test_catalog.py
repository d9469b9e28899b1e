"""The model catalog: built-in models, aliases, the operator's TOML override file, the parameters schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiinone.domain.catalog import Catalog
from apiinone.kinds.image import KIND


@pytest.fixture
def builtin() -> Catalog:
    return Catalog.load()


MEDIA_MODELS = ("local-slideshow", "kling-2.1-standard", "wan-2.2-fast", "veo-3-fast", "minimax-music")


def test_builtin_models_and_prices(builtin: Catalog) -> None:
    gpt = builtin.models["gpt-image-1.5-official"]
    assert (gpt.provider, gpt.upstream_model, gpt.type) == ("openai", "gpt-image-1.5", "image")
    assert gpt.pricing == {"medium": 10, "high": 28} and gpt.price("high") == 28
    assert {"gpt-image-1-5", "gpt-image-1.5"} <= set(gpt.aliases)
    typeset = builtin.models["local-typeset"]
    assert (typeset.provider, typeset.pricing) == ("local-typeset", {"medium": 1, "high": 2})
    assert "not an ai model" in typeset.text("description", "en").lower()
    launched = [m.id for m in builtin.launched()]
    assert [m.id for m in builtin.launched() if m.type == "image"] == ["gpt-image-1.5-official", "local-typeset"]
    speech = builtin.models["local-speech"]
    assert (speech.type, speech.provider, speech.pricing) == ("speech", "local-speech", {"per_mchar": 100})
    assert "not an ai model" in speech.text("description", "en").lower() and "zh" in speech.voices
    assert builtin.resolve("tts-1") is builtin.models["tts-1-official"]
    slideshow = builtin.models["local-slideshow"]
    assert (slideshow.type, slideshow.provider, slideshow.durations) == ("video", "local-slideshow", (2, 4))
    assert slideshow.pricing == {"per_second": {"720p": 1}}
    assert "not an ai model" in slideshow.text("description", "en").lower()
    assert {m.api_key_env for m in builtin.models.values() if m.provider in ("fal", "replicate", "veo")} == {
        "FAL_KEY", "REPLICATE_API_TOKEN", "GEMINI_API_KEY"}
    assert set(MEDIA_MODELS) <= set(launched)
    assert {"local-echo", "gpt-4o", "gpt-4.1-mini", "claude-sonnet-4-5", "gemini-2.5-flash"} <= set(launched)


@pytest.mark.parametrize(("model_id", "provider", "key_env", "prices", "window", "max_out"), [
    ("gpt-4o", "openai", "OPENAI_API_KEY", (250, 1000, 125), 128000, 16384),
    ("gpt-4.1-mini", "openai", "OPENAI_API_KEY", (40, 160, 10), 1047576, 32768),
    ("claude-sonnet-4-5", "anthropic", "ANTHROPIC_API_KEY", (300, 1500, 30), 200000, 64000),
    ("gemini-2.5-flash", "gemini", "GEMINI_API_KEY", (30, 250, 3), 1048576, 65536),
])
def test_builtin_chat_models(builtin: Catalog, model_id: str, provider: str, key_env: str,
                             prices: tuple[int, int, int], window: int, max_out: int) -> None:
    spec = builtin.models[model_id]
    assert spec.type == "chat"
    [route] = spec.effective_routes()
    assert (route.provider, route.api_key_env) == (provider, key_env)
    assert (spec.pricing["input_per_mtok"], spec.pricing["output_per_mtok"],
            spec.pricing["cached_input_per_mtok"]) == prices
    assert (spec.context_window, spec.max_output_tokens) == (window, max_out)


def test_local_echo_is_labelled_and_needs_no_key(builtin: Catalog) -> None:
    echo = builtin.models["local-echo"]
    assert echo.type == "chat" and "not an ai model" in echo.text("description", "en").lower()
    [route] = echo.effective_routes()
    assert route.provider == "local-echo" and route.api_key_env is None


@pytest.mark.parametrize("name", ["gpt-image-1.5-official", "gpt-image-1-5", "gpt-image-1.5", "GPT-Image-1-5",
                                  "GPT-IMAGE-1.5-OFFICIAL"])
def test_ids_and_aliases_resolve_case_insensitively(builtin: Catalog, name: str) -> None:
    spec = builtin.resolve(name)
    assert spec is not None and spec.id == "gpt-image-1.5-official"


def test_unknown_names_do_not_resolve(builtin: Catalog) -> None:
    assert builtin.resolve("gpt-image-2") is None
    assert builtin.resolve("") is None


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_override_file_merges_by_id_and_adds_models(tmp_path: Path) -> None:
    catalog = Catalog.load(write(tmp_path, """
[[models]]
id = "gpt-image-1.5-official"
pricing = { medium = 12, high = 30 }
base_url = "http://gateway.internal/v1"

[[models]]
id = "house-model"
name = "House Model"
aliases = ["House"]
type = "image"
provider = "openai"
upstream_model = "gpt-image-1"
pricing = { medium = 3 }
api_key_env = "HOUSE_KEY"
"""))
    gpt = catalog.models["gpt-image-1.5-official"]
    assert gpt.pricing == {"medium": 12, "high": 30} and gpt.base_url == "http://gateway.internal/v1"
    assert gpt.upstream_model == "gpt-image-1.5" and "gpt-image-1-5" in gpt.aliases, "unset fields are kept"
    house = catalog.resolve("house")
    assert house is not None and house.id == "house-model" and house.api_key_env == "HOUSE_KEY"
    assert house.launched and house.enabled
    assert {m.id for m in catalog.launched() if m.type == "image"} == {"gpt-image-1.5-official", "local-typeset",
                                                                     "house-model"}
    assert KIND.parameters_schema(house)["properties"]["quality"]["enum"] == ["medium"]


def test_unlaunched_or_disabled_models_are_hidden_from_the_list(tmp_path: Path) -> None:
    catalog = Catalog.load(write(tmp_path, """
[[models]]
id = "gpt-image-1.5-official"
launched = false

[[models]]
id = "local-typeset"
enabled = false
"""))
    assert [m for m in catalog.launched() if m.type == "image"] == []
    assert catalog.resolve("gpt-image-1-5") is not None, "lookups still see it; the service refuses it"


@pytest.mark.parametrize(("text", "message"), [
    ('[[models]]\nname = "no id"\n', "needs an id"),
    ('[[models]]\nid = "half-a-model"\nname = "Half"\n', "missing"),
])
def test_bad_override_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Catalog.load(write(tmp_path, text))


def test_parameters_schema_describes_the_request_body(builtin: Catalog) -> None:
    spec = builtin.models["gpt-image-1.5-official"]
    schema = KIND.parameters_schema(spec)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == ["model", "prompt"]
    props = schema["properties"]
    assert set(props) == {"model", "prompt", "aspect_ratio", "quality", "input_urls", "callback_url"}
    assert props["model"]["enum"] == ["gpt-image-1.5-official", *spec.aliases]
    assert (props["prompt"]["minLength"], props["prompt"]["maxLength"]) == (1, 5000)
    assert props["aspect_ratio"] == {**props["aspect_ratio"], "enum": ["1:1", "2:3", "3:2"], "default": "1:1"}
    assert props["quality"]["enum"] == ["medium", "high"] and props["quality"]["default"] == "medium"
    assert '"high" (28 credits)' in props["quality"]["description"]
    assert (props["input_urls"]["minItems"], props["input_urls"]["maxItems"]) == (1, 16)


def test_public_model_object(builtin: Catalog) -> None:
    public = builtin.models["local-typeset"].to_public(available=True)
    assert {"id", "aliases", "type", "input_modalities", "output_modalities", "pricing", "available",
            "parameters"} <= set(public)
    assert (public["id"], public["type"], public["available"]) == ("local-typeset", "image", True)
    assert public["pricing"] == {"medium": 1, "high": 2} and public["output_modalities"] == ["image"]


def test_admin_overrides_make_a_copy(builtin: Catalog) -> None:
    changed = builtin.with_overrides({"local-typeset": {"pricing": {"medium": 5, "high": 9}, "enabled": False}})
    assert changed.models["local-typeset"].pricing == {"medium": 5, "high": 9}
    assert [m.id for m in changed.launched() if m.type == "image"] == ["gpt-image-1.5-official"]
    assert builtin.models["local-typeset"].pricing == {"medium": 1, "high": 2}
