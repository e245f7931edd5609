"""Identity and text hygiene (issue 14, item 6).

- Ids that differ only by case, surrounding spaces, invisible characters (U+200B, U+FEFF, bidi marks) or
  look-alike letters (the UTS #39 confusables skeleton: Cyrillic "с", Greek "ο", "0" and "O") are one id: such
  spellings are located problems in validation and intake, and folds never split them; different ids stay apart.
- Client text that looks like control tokens (`<|eot_id|>`, `<|im_start|>`, the tiny preset's `<|end|>`, ...)
  is encoded as plain text in prompts and targets, on the tiny tokenizer and on tokenizers carrying the real
  Llama-3.1 and Qwen2.5 added-token lists with their chat templates; transformers and the package tokenizer
  of `care score` give the same ids; clean text keeps exactly the ids it had.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import corpus_rows, session_dict, write_jsonl_file

from care.data.ids import normalise_id, readable_id
from care.data.instrument import load_instrument
from care.data.schema import Session

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
INSTRUMENT = load_instrument("wai-sr")

# The added tokens of the real presets (their tokenizer.json files): Llama-3.1 has 256 special tokens
# (ids 128000-128255), Qwen2.5 22 added tokens, of which 8 are not marked special (fill-in-the-middle, tools).
LLAMA_SPECIAL = (["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
                  "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
                 + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)])
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>"]
PRESETS = {
    "llama-3.1": dict(specials=LLAMA_SPECIAL, added=[], bos="<|begin_of_text|>", eos="<|eot_id|>",
                      pad="<|finetune_right_pad_id|>"),
    "qwen2.5": dict(specials=QWEN_SPECIAL, added=QWEN_ADDED, bos=None, eos="<|im_end|>", pad="<|endoftext|>"),
}


# ------------------------------------------------------------------------------------------------- ids


def test_ids_normalise_case_spaces_and_invisible_characters():
    same = ["c001", "C001", " c001 ", "c001\u200b", "\ufeffc001", "ｃ００１", "c\u200d001", "c001\u200e"]
    assert {readable_id(v) for v in same} == {"c001"} and len({normalise_id(v) for v in same}) == 1
    assert normalise_id("c002") != normalise_id("c001") and normalise_id("\u200b \u200b") == ""


# Latin c0040 and its look-alikes: Cyrillic es, Greek omicron, capital O for zero, full-width digits, a
# Cyrillic capital ES with a zero-width joiner, mixed Cyrillic and Greek
LOOK_ALIKES = ["c0040", "\u04410040", "c\u03bf040", "c0O40", "c\uff10\uff10\uff14\uff10", "\u0421\u200d0040",
               "\u0441\u03bf\u041e4\u03bf"]
DIFFERENT = ["c0040", "c0041", "c0400", "c040", "client0040", "张伟", "张伟2", "张玮", "田中", "山田", "さとう", "さいとう",
             "サトウ", "김민준", "김민수", "Müller", "Muller"]


def test_look_alike_ids_are_one_id_and_different_ids_stay_apart():
    assert len({normalise_id(v) for v in LOOK_ALIKES}) == 1
    assert len({normalise_id(v) for v in DIFFERENT}) == len(DIFFERENT)


def test_look_alike_ids_are_problems_in_validation_and_intake_and_one_group_in_folds(tmp_path):
    from care.data.folds import fold_of, make_folds
    from care.data.intake import conflict_problems
    from care.data.validation import validate_file

    rows = [session_dict(session_id="s1", client_id="c0040"), session_dict(session_id="s2", client_id="\u04410040"),
            session_dict(session_id="\u04151", client_id="c0041"), session_dict(session_id="E1", client_id="c0041")]
    problems = validate_file(write_jsonl_file(tmp_path, rows)).problems
    assert {(p.line, p.field) for p in problems} == {(1, "client_id"), (2, "client_id"), (3, "session_id"),
                                                     (4, "session_id")}
    assert all("look-alike" in p.message for p in problems)
    existing = [Session.model_validate(session_dict(session_id="s1", client_id="c0040"))]
    new = [Session.model_validate(session_dict(session_id="\u04151", client_id="c0041")),
           Session.model_validate(session_dict(session_id="s2", client_id="c\u03bf040"))]
    found = conflict_problems(existing, [1], "data/sessions.jsonl", new, [1, 2], "new.jsonl")
    assert {(p.line, p.field) for p in found} == {(2, "client_id")}  # E1 (Cyrillic E) is not s1
    rows = corpus_rows(40, n_turns=4)
    for row, spelling in zip(rows[:len(LOOK_ALIKES)], LOOK_ALIKES):
        row["client_id"] = spelling
    sessions = [Session.model_validate(r) for r in rows]
    where = fold_of(make_folds(sessions, INSTRUMENT, 4, seed=1))
    assert len({where[s.session_id] for s in sessions[:len(LOOK_ALIKES)]}) == 1


def test_validation_reports_spellings_and_near_duplicate_sessions(tmp_path):
    from care.data.validation import validate_file

    rows = [session_dict(session_id="s1", client_id="c001", counselor_id="t09"),
            session_dict(session_id="s2", client_id="C001", counselor_id="t09"),
            session_dict(session_id="s3", client_id="c001\u200b", counselor_id="t09"),
            session_dict(session_id="S1 ", client_id="c009", counselor_id="t09"),
            session_dict(session_id="s5", client_id="\u200b", counselor_id="T01"),
            session_dict(session_id="s6", client_id="c010", counselor_id="t01")]
    problems = validate_file(write_jsonl_file(tmp_path, rows)).problems
    got = {(p.line, p.field, p.message.split(" (")[0].split(":")[0]) for p in problems}
    assert got == {
        (1, "client_id", "client id written differently on line 2, 3"),
        (2, "client_id", "client id written differently on line 1, 3"),
        (3, "client_id", "client id written differently on line 1, 2"),
        (1, "session_id", "duplicate session id"),
        (4, "session_id", "duplicate session id"),
        (5, "client_id", "empty client id"),
        (5, "counselor_id", "counselor id written differently on line 6"),
        (6, "counselor_id", "counselor id written differently on line 5"),
    }
    assert all("\u200b" not in str(p) for p in problems)  # shown as '?', never as the invisible character
    assert "written differently" in next(p.message for p in problems if p.line == 4)


def test_folds_keep_one_client_whatever_its_spelling():
    from care.data.folds import fold_of, make_folds

    rows = corpus_rows(40, n_turns=4)
    spellings = ["c0000", "C0000", "c0000\u200b", " c0000 ", "ｃ0000"]
    for row, spelling in zip(rows[:5], spellings):
        row["client_id"] = spelling
    sessions = [Session.model_validate(r) for r in rows]
    where = fold_of(make_folds(sessions, INSTRUMENT, 4, seed=1))
    assert len({where[s.session_id] for s in sessions[:5]}) == 1


def test_intake_refuses_an_id_already_present_in_another_spelling():
    from care.data.intake import conflict_problems

    existing = [Session.model_validate(session_dict(session_id="s1", client_id="c001", counselor_id="t01"))]
    new = [Session.model_validate(session_dict(session_id="S1\u200b", client_id="c777")),
           Session.model_validate(session_dict(session_id="s2", client_id="C001 ", counselor_id="t01")),
           Session.model_validate(session_dict(session_id="s3", client_id="c001", counselor_id="T01")),
           Session.model_validate(session_dict(session_id="s4", client_id="c001", counselor_id="t02"))]
    problems = conflict_problems(existing, [1], "data/sessions.jsonl", new, [1, 2, 3, 4], "new.jsonl")
    got = {(p.line, p.field) for p in problems}
    assert got == {(1, "session_id"), (2, "client_id"), (3, "counselor_id"), (4, "counselor_id")}
    assert "as s1" in next(p.message for p in problems if p.line == 1)
    assert "already has sessions with counselor t01" in next(p.message for p in problems if p.line == 4)


# ---------------------------------------------------------------------------------------- control tokens


def _tokenizer(preset: str, where: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = PRESETS[preset]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(r["turns"][i]["text"] for i in range(4)) for r in corpus_rows(20, n_turns=4)]
    tok.train_from_iterator(corpus + ["system user assistant Today Date 0123456789 < | > end"],
                            trainer=trainers.BpeTrainer(vocab_size=600, special_tokens=spec["specials"],
                                                        show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=spec["bos"], eos_token=spec["eos"],
                                 pad_token=spec["pad"], additional_special_tokens=spec["specials"],
                                 chat_template=(TEMPLATES / f"{preset}.jinja").read_text("utf-8"),
                                 clean_up_tokenization_spaces=False)
    if spec["added"]:
        hf.add_tokens(spec["added"])  # added, not special: matched in text all the same
    hf.save_pretrained(where / preset)
    return hf, where / preset


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """(transformers tokenizer, package tokenizer) per preset: tiny, llama-3.1, qwen2.5."""
    from test_release import build_tiny_release

    from care.release.onnx_runtime import PackageTokenizer

    where = tmp_path_factory.mktemp("control_tokens")
    rel = build_tiny_release(tmp_path_factory.getbasetemp() / "tiny_release")
    out = {"tiny": (rel["tokenizer"], PackageTokenizer(rel["package"]))}
    for preset in PRESETS:
        hf, saved = _tokenizer(preset, where)
        out[preset] = (hf, PackageTokenizer(saved))
    return out


def _look_alikes(hf) -> list[str]:
    return sorted(hf.backend_tokenizer.get_added_tokens_decoder()[i].content
                  for i in hf.backend_tokenizer.get_added_tokens_decoder())


def _sessions(texts: list[str]) -> tuple[Session, Session]:
    """A session whose transcript, context and rationales carry `texts`, and the same with harmless text."""
    def build(words: list[str]) -> Session:
        joined = " ".join(words)
        turns = [{"speaker": "counselor", "text": f"你好 {joined}"}, {"speaker": "client", "text": joined},
                 {"speaker": "counselor", "text": words[0]}, {"speaker": "client", "text": f"{words[-1]}结束"}]
        return Session.model_validate(session_dict(turns=turns, context=f"背景 {joined}",
                                                   rationales={i: f"{words[int(i) % len(words)]} 依据" for i in
                                                               INSTRUMENT.item_ids}))
    return build(texts), build(["x" * len(t) for t in texts])


@pytest.mark.parametrize("preset", ["tiny", "llama-3.1", "qwen2.5"])
def test_control_token_look_alikes_in_client_text_stay_plain_text(tokenizers, preset):
    from care.model.prompts import PromptBuilder, PromptConfig
    from care.params import ModelParams

    hf, packaged = tokenizers[preset]
    specials = _look_alikes(hf)
    added = set(hf.backend_tokenizer.get_added_tokens_decoder())
    assert len(specials) >= (3 if preset == "tiny" else 14)
    dirty, clean = _sessions(specials)
    untruncated = PromptConfig.from_params(ModelParams(max_length=1 << 17, target_tokens=64))  # every look-alike
    builders = [PromptBuilder(t, INSTRUMENT, untruncated) for t in (hf, packaged)]
    enc = [b.encode(dirty) for b in builders]
    assert enc[0].prefix == enc[1].prefix and not enc[0].truncated  # training and `care score` agree
    controls = Counter(i for i in enc[0].prefix if i in added)
    assert controls == Counter(i for i in builders[0].encode(clean).prefix if i in added)  # the template's only
    shown = hf.decode(enc[0].prefix, skip_special_tokens=False)
    assert all(s in shown for s in specials)  # ... and each look-alike is there as text
    for item, rationale in dirty.rationales.items():
        target, _ = builders[0].target(4, rationale)
        assert [i for i in target if i in added] == [hf.eos_token_id]  # only the real end of the target
        assert builders[1].target(4, rationale)[0] == target


@pytest.mark.parametrize("preset", ["tiny", "llama-3.1", "qwen2.5"])
def test_clean_text_keeps_exactly_its_ids(tokenizers, preset):
    from care.model.prompts import PromptBuilder, PromptConfig, _render, item_block, render_transcript
    from care.params import ModelParams

    hf, _ = tokenizers[preset]
    session = Session.model_validate(corpus_rows(1, n_turns=8)[0])
    builder = PromptBuilder(hf, INSTRUMENT, PromptConfig.from_params(ModelParams(max_length=8192, target_tokens=64)))
    texts = INSTRUMENT.prompt_texts(session.language)
    prefix = _render(hf, texts, render_transcript(session, texts), item_block(INSTRUMENT, "1", "zh"),
                     builder.config.prompt_date)[0]
    assert builder.encode(session).prefix == hf(prefix, add_special_tokens=False)["input_ids"]
