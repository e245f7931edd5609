"""Prompt wording is data: zh and en ship as YAML, an instrument adds a language with YAML alone, and an
instrument whose language has no wording is refused when it is loaded (so at `care validate`), located."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import session_dict, write_jsonl_file

from care.data.instrument import instrument_path, load_instrument
from care.data.prompt_texts import builtin_languages, builtin_prompt_texts
from care.data.schema import Session
from care.errors import CareError
from care.model.prompts import item_block, render_transcript

JA = {
    "language": "ja", "system": "あなたはカウンセリングを終えたばかりのクライエントです。",
    "instruction": "以下はセッションの記録です。クライエントとして質問に答えてください。",
    "context": "セッション前の本人の説明：", "speakers": {"counselor": "カウンセラー", "client": "クライエント"},
    "colon": "：", "item": "項目：{text}\n選択肢：{options}\nまず点数（数字一つ）だけを書き、改行して理由を述べてください。",
    "option": "{point}={label}", "sep": "、", "quotes": [["「", "」"]],
}


def _instrument(tmp_path, prompts=None, languages=("ja",)):
    doc = yaml.safe_load(instrument_path("esconv-seeker").read_text("utf-8"))
    doc["name"] = "ja-two-items"
    doc["languages"] = list(languages)
    for item in doc["items"]:
        item["text"] = {lang: f"{item['id']} ({lang})" for lang in languages}
    doc["scale"]["labels"] = {p: {lang: f"{p}点" for lang in languages} for p in doc["scale"]["labels"]}
    if prompts is not None:
        doc["prompts"] = prompts
    path = tmp_path / "instrument.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), "utf-8")
    return path


def test_the_shipped_wording_renders_exactly_as_before():
    wai = load_instrument("wai-sr")
    assert builtin_languages() == ["en", "zh"]
    assert item_block(wai, "1", "zh").startswith("题目：") and "\n选项：1=很少，2=有时" in item_block(wai, "1", "zh")
    assert item_block(wai, "1", "zh").endswith("请先只写出你选择的分数（一个数字），再换行说明理由，并引用对话。")
    assert item_block(wai, "1", "en").split("\n")[1].startswith("Options: 1 = Seldom, 2 = Sometimes")
    s = Session.model_validate(session_dict(context="背景"))
    assert render_transcript(s).splitlines()[:2] == ["来访者会谈前的自述：背景", "咨询师：你好，今天想聊些什么？"]
    assert builtin_prompt_texts("en").context == "The client's own description before the session: "


def test_a_new_language_is_yaml_only(tmp_path, run_cli):
    path = _instrument(tmp_path, {"ja": JA})
    inst = load_instrument(path)
    assert item_block(inst, inst.item_ids[0], "ja").startswith("項目：")
    row = session_dict(language="ja", client_ratings={i: 4 for i in inst.item_ids}, counselor_ratings=None,
                       rationales=None)
    data = write_jsonl_file(tmp_path / "ja.jsonl", [row])
    result = run_cli("validate", str(data), "--instrument", str(path))
    assert result.exit_code == 0, result.output
    assert "カウンセラー：" in render_transcript(Session.model_validate(row), inst.prompt_texts("ja"))


def test_a_language_without_wording_is_refused_at_validate_time(tmp_path, run_cli):
    path = _instrument(tmp_path)
    with pytest.raises(CareError, match="no prompt wording for language\\(s\\) ja: add prompts.ja"):
        load_instrument(path)
    data = write_jsonl_file(tmp_path / "ja.jsonl", [session_dict(language="ja")])
    result = run_cli("validate", str(data), "--instrument", str(path))
    assert result.exit_code == 1 and "no prompt wording" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("field, value, where", [
    ("item", "項目：{text}", "prompts.ja.item"), ("option", "{point}", "prompts.ja.option"),
    ("item", "{text} {options} {oops}", "prompts.ja.item"), ("speakers", {"counselor": "c"}, "prompts.ja.speakers.client"),
    ("language", "jp", "prompts"),
])
def test_bad_wording_is_a_located_error(tmp_path, field, value, where):
    bad = copy.deepcopy(JA)
    bad[field] = value
    with pytest.raises(CareError) as info:
        load_instrument(_instrument(tmp_path, {"ja": bad}))
    assert where in str(info.value) and "\n" not in str(info.value)


def test_rationale_metrics_count_characters_for_languages_written_without_spaces():
    from care.evaluation.rationale_quality import rationale_quality

    ref, hyp = "カウンセラーは「安心して話せます」と返した。", "カウンセラーは「安心して」と言った。"
    marks = {"ja": [("「", "」")], "ja-JP": [("「", "」")]}
    ja = rationale_quality([(hyp, ref, ["ここなら安心して話せます。"], "ja")], marks)
    assert ja["rouge_l_f"] > 0.5 and ja["bleu"] > 10 and ja["grounding_rate"] == 1.0
    assert rationale_quality([(ref, ref, [], "ja-JP")], marks)["bleu"] == pytest.approx(100.0)
