"""Reproducible prompts on every preset: the real Llama-3.1 and Qwen2.5 chat templates (fixtures) rendered
on two different days give identical token ids, in transformers and in the package tokenizer of
`care score`, because the date a template may read is pinned (`model.prompt_date`)."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest

from conftest import corpus_rows

from care.data.instrument import load_instrument
from care.data.schema import Session
from care.model.prompts import PromptBuilder, PromptConfig
from care.params import ModelParams

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
SPECIALS = {
    "llama-3.1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                  "extra": ["<|start_header_id|>", "<|end_header_id|>"]},
    "qwen2.5": {"bos_token": None, "eos_token": "<|im_end|>", "extra": ["<|im_start|>", "<|endoftext|>"]},
}
DAYS = (datetime(2026, 3, 1, 9), datetime(2026, 12, 24, 23))


def _config(prompt_date: date | None = None) -> PromptConfig:
    """A 1024-token context, 32 target tokens, and `prompt_date` (None: the params' default)."""
    dated = {} if prompt_date is None else {"prompt_date": prompt_date}
    return PromptConfig.from_params(ModelParams(max_length=1024, target_tokens=32, **dated))


def _tokenizer(preset: str, tmp_path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = SPECIALS[preset]
    specials = [t for t in (spec["bos_token"], spec["eos_token"], *spec["extra"], "<|pad|>") if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["Today Date 26 Jul 2024 Mar Dec 0123456789 system user assistant 咨询 来访者"],
                            trainer=trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec["bos_token"], eos_token=spec["eos_token"],
                                 pad_token="<|pad|>", additional_special_tokens=spec["extra"],
                                 chat_template=(TEMPLATES / f"{preset}.jinja").read_text("utf-8"),
                                 model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False)
    hf.save_pretrained(tmp_path / preset)
    return hf, tmp_path / preset


class _Clock:
    """Stands in for `datetime` in the template renderers: `now()` is the day under test."""

    day = DAYS[0]

    @classmethod
    def now(cls, tz=None):  # noqa: ARG003
        return cls.day


def _on(day: datetime, monkeypatch) -> None:
    import transformers.utils.chat_template_utils as ctu

    import care.release.onnx_runtime as ort_side

    _Clock.day = day
    monkeypatch.setattr(ctu, "datetime", _Clock)
    monkeypatch.setattr(ort_side, "datetime", _Clock)


@pytest.mark.parametrize("preset", ["llama-3.1", "qwen2.5"])
def test_the_real_templates_give_the_same_ids_on_two_days(preset, tmp_path, monkeypatch):
    from care.release.onnx_runtime import PackageTokenizer

    hf, saved = _tokenizer(preset, tmp_path)
    session = Session.model_validate(corpus_rows(1, n_turns=6)[0])
    instrument = load_instrument("wai-sr")
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    raw, pinned, packaged = [], [], []
    for day in DAYS:
        _on(day, monkeypatch)
        raw.append(hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        for tok, out in ((hf, pinned), (PackageTokenizer(saved), packaged)):
            enc = PromptBuilder(tok, instrument, _config(date(2024, 7, 26))).encode(session)
            out.append((enc.prefix, enc.items))
    if preset == "llama-3.1":  # the template really reads the day: unpinned renders differ
        assert raw[0] != raw[1] and "01 Mar 2026" in raw[0] and "24 Dec 2026" in raw[1]
        assert "Today Date: 26 Jul 2024" in hf.decode(pinned[0][0])
    assert pinned[0] == pinned[1]
    assert packaged[0] == packaged[1] == pinned[0]


def test_the_pinned_date_is_a_param_and_changes_the_prompt(tmp_path):
    hf, _ = _tokenizer("llama-3.1", tmp_path)
    session = Session.model_validate(corpus_rows(1, n_turns=6)[0])
    instrument = load_instrument("wai-sr")
    default = PromptBuilder(hf, instrument, _config()).encode(session)
    assert PromptBuilder(hf, instrument, _config(ModelParams().prompt_date)).encode(session) == default
    other = PromptBuilder(hf, instrument, _config(date(2025, 1, 2))).encode(session)
    assert other.prefix != default.prefix and "Today Date: 02 Jan 2025" in hf.decode(other.prefix)
