"""The unlabelled corpus the embedded base is pretrained on (`care base build`), and its tokenizer texts.

- Synthetic transcripts (care.data.synth) in each of `corpus.languages`, from seeds `corpus.seed + k` that
  never generate the default data (seed 0); held-out documents come from further seeds. Only the
  transcripts are used: no ratings, no rationales.
- Every built-in instrument's item and scale texts and every shipped prompt wording, so the tokenizer and
  the model know the prompts the fine-tuning uses.
- Multi-script text that ships with the Faker package (lorem sentences, names, addresses, jobs, companies
  of each locale in `corpus.script_locales`), so no common script degrades to bytes in the tokenizer, and
  the model has seen every script it may meet.

Documents are what the model reads: two thirds of the transcripts under the chat prompt of a random item
(no answer), one third as plain text ending in EOS; the multi-script lines as plain documents.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from care.params import BaseBuildParams, ModelParams

INSTRUMENTS_DIR = Path(__file__).resolve().parents[1] / "data" / "instruments"
PROMPTS_DIR = INSTRUMENTS_DIR.parent / "prompts"
FAKER_FIELDS = ("sentence", "name", "address", "city", "job", "company")
HELDOUT_SEED_OFFSET = 500  # held-out transcripts: seeds corpus.seed + 500 + k
SCRIPT_HELDOUT_SEED = 99  # Faker seed of the held-out multi-script lines (training lines use seed 0)


@dataclass
class Corpus:
    transcripts: list[tuple[str, str]]  # (language, rendered transcript)
    heldout: list[tuple[str, str]]
    script_lines: dict[str, list[str]]  # locale -> lines
    script_heldout: dict[str, list[str]]
    prompt_texts: list[str]  # instrument and prompt wording (tokenizer text)


def wording_digest() -> str:
    """sha256 of the built-in instruments' and prompt wording's YAML (text the corpus is made of)."""
    import hashlib

    h = hashlib.sha256()
    for folder in (INSTRUMENTS_DIR, PROMPTS_DIR):
        for path in sorted(folder.glob("*.yaml")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def builtin_instruments():
    from care.data.instrument import load_instrument

    return [load_instrument(p.stem) for p in sorted(INSTRUMENTS_DIR.glob("*.yaml"))]


def faker_lines(locale: str, n: int, seed: int) -> list[str]:
    """`n` lines of the locale's own text from Faker, deterministic in `seed` (and the pinned Faker version)."""
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(seed)
    lines = []
    for k in range(n):
        field = FAKER_FIELDS[k % len(FAKER_FIELDS)]
        text = fake.sentence(nb_words=10) if field == "sentence" else getattr(fake, field)()
        lines.append(" ".join(str(text).split()))
    return lines


def _transcripts(languages: list[str], per_language: int, seed: int, utterances: int, desc: str) -> list[tuple[str, str]]:
    from tqdm.auto import tqdm

    from care.data.prompt_texts import builtin_prompt_texts
    from care.data.synth import generate
    from care.model.prompts import render_transcript

    out = []
    for k, lang in enumerate(tqdm(languages, desc=desc, leave=False)):
        sessions, _ = generate(n_sessions=per_language, language=lang, seed=seed + k, mean_utterances=utterances)
        texts = builtin_prompt_texts(lang)
        out += [(lang, render_transcript(s, texts)) for s in sessions]
    return out


def build_corpus(build: BaseBuildParams) -> Corpus:
    """Generate the whole corpus (deterministic in the params)."""
    from care.model.prompts import item_block

    c = build.corpus
    transcripts = _transcripts(c.languages, c.sessions_per_language, c.seed, c.utterances, "synthetic transcripts")
    heldout = _transcripts(c.languages, c.heldout_sessions_per_language, c.seed + HELDOUT_SEED_OFFSET, c.utterances,
                           "held-out transcripts")
    script_lines = {loc: faker_lines(loc, c.script_lines_per_locale, 0) for loc in c.script_locales}
    script_heldout = {loc: faker_lines(loc, 60, SCRIPT_HELDOUT_SEED) for loc in c.script_locales}
    prompt_texts: list[str] = []
    for instrument in builtin_instruments():
        for lang in instrument.languages:
            t = instrument.prompt_texts(lang)
            prompt_texts += [t.system, t.instruction, t.context, t.speakers.counselor, t.speakers.client]
            prompt_texts += [item_block(instrument, item_id, lang) for item_id in instrument.item_ids]
    return Corpus(transcripts, heldout, script_lines, script_heldout, prompt_texts)


def tokenizer_texts(corpus: Corpus, n_transcripts: int = 4000) -> list[str]:
    """What the tokenizer is trained on: a slice of the transcripts, all multi-script lines (repeated so
    that each script weighs about as much as one synthetic language), and the prompt wording."""
    per_lang: dict[str, list[str]] = {}
    for lang, text in corpus.transcripts:
        if len(per_lang.setdefault(lang, [])) < n_transcripts // max(1, len({l for l, _ in corpus.transcripts})):
            per_lang[lang].append(text)
    texts = [t for lines in per_lang.values() for t in lines]
    for lines in corpus.script_lines.values():
        texts += lines
    return texts + corpus.prompt_texts * 20


@dataclass
class Documents:
    train: list[list[int]]
    heldout: list[list[int]]
    kinds: dict[str, int]  # documents per kind (counts only)


def _chat_doc(tokenizer, instrument, lang: str, transcript: str, item_id: str, model: ModelParams) -> str:
    from care.model.prompts import item_block, template_variables

    texts = instrument.prompt_texts(lang)
    messages = [
        {"role": "system", "content": texts.system},
        {"role": "user", "content": f"{texts.instruction}\n\n{transcript}\n\n{item_block(instrument, item_id, lang)}"},
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **template_variables(model.prompt_date))


def documents(corpus: Corpus, tokenizer, model: ModelParams) -> Documents:
    """Token ids of every training and held-out document (see the module docstring)."""
    from tqdm.auto import tqdm

    build = model.base_build
    rng = random.Random(build.seed)
    instruments = [i for i in builtin_instruments()]

    def render(pairs: list[tuple[str, str]], desc: str) -> tuple[list[str], dict[str, int]]:
        texts, kinds = [], {"chat": 0, "plain": 0}
        for k, (lang, transcript) in enumerate(tqdm(pairs, desc=desc, leave=False, mininterval=1.0)):
            usable = [i for i in instruments if lang in i.languages]
            if k % 3 == 2 or not usable:
                texts.append(tokenizer.bos_token + transcript + tokenizer.eos_token)
                kinds["plain"] += 1
            else:
                instrument = usable[rng.randrange(len(usable))]
                item_id = instrument.item_ids[rng.randrange(len(instrument.item_ids))]
                texts.append(_chat_doc(tokenizer, instrument, lang, transcript, item_id, model))
                kinds["chat"] += 1
        return texts, kinds

    train_texts, kinds = render(corpus.transcripts, "render documents")
    heldout_texts, _ = render(corpus.heldout, "render held-out")
    n_script = round(build.corpus.script_share * len(train_texts) / max(1e-9, 1 - build.corpus.script_share))
    script_docs = _script_documents(corpus.script_lines, n_script, rng, tokenizer)
    kinds["script"] = len(script_docs)
    encode = lambda texts: [list(e.ids) for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
    train = encode(train_texts + script_docs)
    heldout = encode(heldout_texts)
    return Documents(train=train, heldout=heldout, kinds=kinds)


def _script_documents(lines: dict[str, list[str]], n: int, rng: random.Random, tokenizer, lines_per_doc: int = 24) -> list[str]:
    locales = sorted(lines)
    docs = []
    for k in range(n if locales else 0):
        pool = lines[locales[k % len(locales)]]
        start = rng.randrange(max(1, len(pool) - lines_per_doc))
        docs.append(tokenizer.bos_token + "\n".join(pool[start:start + lines_per_doc]) + tokenizer.eos_token)
    return docs
