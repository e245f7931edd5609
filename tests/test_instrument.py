"""Instrument definitions: the built-in WAI-SR mapping and clear failures for broken YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from care.errors import CareError
from care.data.instrument import BUILTIN, instrument_path, load_instrument


def test_wai_sr_dimensions_match_the_paper():
    inst = load_instrument("wai-sr")
    assert inst.item_ids == [str(i) for i in range(1, 13)]
    assert inst.items_by_dimension == {
        "goal": ["4", "6", "8", "11"],
        "task": ["1", "2", "10", "12"],
        "bond": ["3", "5", "7", "9"],
    }
    assert inst.scale.points == [1, 2, 3, 4, 5]
    assert set(inst.languages) == {"zh", "en"}
    assert inst.scale.labels[1]["en"] == "Seldom" and inst.scale.labels[5]["en"] == "Always"


def test_default_instrument_is_wai_sr():
    assert load_instrument().name == "wai-sr"
    assert load_instrument(None).name == "wai-sr"


def test_dimension_scores_are_item_means():
    inst = load_instrument()
    ratings = {str(i): i % 5 + 1 for i in range(1, 13)}
    scores = inst.dimension_scores(ratings)
    assert scores["task"] == pytest.approx((2 + 3 + 1 + 3) / 4)
    assert scores["bond"] == pytest.approx((4 + 1 + 3 + 5) / 4)
    assert scores["goal"] == pytest.approx((5 + 2 + 4 + 2) / 4)


def test_builtin_path_points_at_the_packaged_file():
    path = instrument_path("wai-sr")
    assert path.is_file() and path.name == BUILTIN["wai-sr"]


def _wai_data() -> dict:
    return yaml.safe_load(instrument_path("wai-sr").read_text("utf-8"))


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "inst.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_a_copy_of_wai_sr_loads_from_a_file(tmp_path):
    inst = load_instrument(_write(tmp_path, _wai_data()))
    assert inst.items_by_dimension["task"] == ["1", "2", "10", "12"]


def test_duplicate_item_ids_fail_clearly(tmp_path):
    data = _wai_data()
    data["items"][1]["id"] = "1"
    with pytest.raises(CareError, match=r"duplicate item ids: 1\b"):
        load_instrument(_write(tmp_path, data))


@pytest.mark.parametrize("items", [[], None])
def test_no_items_fails_clearly(tmp_path, items):
    data = _wai_data()
    if items is None:
        del data["items"]
    else:
        data["items"] = items
    with pytest.raises(CareError, match=r"field=items"):
        load_instrument(_write(tmp_path, data))


def test_item_without_id_fails_clearly(tmp_path):
    data = _wai_data()
    del data["items"][3]["id"]
    with pytest.raises(CareError, match=r"field=items\.3\.id"):
        load_instrument(_write(tmp_path, data))


def test_item_missing_a_language_text_fails_clearly(tmp_path):
    data = _wai_data()
    del data["items"][0]["text"]["en"]
    with pytest.raises(CareError, match=r"item 1: no text for language\(s\) en"):
        load_instrument(_write(tmp_path, data))


def test_dimension_without_items_fails_clearly(tmp_path):
    data = _wai_data()
    data["dimensions"].append("extra")
    with pytest.raises(CareError, match=r"dimension 'extra' has no items"):
        load_instrument(_write(tmp_path, data))


def test_item_with_unknown_dimension_fails_clearly(tmp_path):
    data = _wai_data()
    data["items"][0]["dimension"] = "nope"
    with pytest.raises(CareError, match=r"item 1: dimension 'nope' is not in dimensions"):
        load_instrument(_write(tmp_path, data))


def test_scale_labels_must_cover_the_scale(tmp_path):
    data = _wai_data()
    del data["scale"]["labels"][3]
    with pytest.raises(CareError, match=r"scale"):
        load_instrument(_write(tmp_path, data))


def test_missing_file_and_bad_yaml_fail_in_one_line(tmp_path):
    with pytest.raises(CareError, match="instrument file not found") as info:
        load_instrument(tmp_path / "absent.yaml")
    assert "\n" not in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("items: [unclosed\n", encoding="utf-8")
    with pytest.raises(CareError, match="not valid YAML"):
        load_instrument(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(CareError, match="must be a YAML mapping"):
        load_instrument(listy)


def test_a_two_item_instrument(tmp_path):
    data = {
        "name": "seeker",
        "languages": ["en"],
        "scale": {"min": 1, "max": 5, "labels": {i: {"en": f"level {i}"} for i in range(1, 6)}},
        "dimensions": ["empathy", "relevance"],
        "items": [
            {"id": "empathy", "dimension": "empathy", "text": {"en": "The helper understood me."}},
            {"id": "relevance", "dimension": "relevance", "text": {"en": "The talk stayed on my problem."}},
        ],
    }
    inst = load_instrument(_write(tmp_path, data))
    assert inst.item_ids == ["empathy", "relevance"]
    assert inst.dimension_scores({"empathy": 4, "relevance": 2}) == {"empathy": 4.0, "relevance": 2.0}
