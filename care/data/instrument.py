"""Instruments (questionnaires) as YAML: items (each in one dimension, or none) with texts per language, and a scale."""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from care.data.prompt_texts import PromptTexts, builtin_languages, builtin_prompt_texts
from care.errors import CareError, label
from care.safe_yaml import load_yaml

BUILTIN = {"wai-sr": "wai-sr.yaml", "esconv-seeker": "esconv-seeker.yaml"}
DEFAULT_INSTRUMENT = "wai-sr"


MAX_POINTS = 11  # 0-10, the largest common rating scale
_ANSWER = re.compile(r"[0-9A-Za-z]")
_NAME = re.compile(r"\w[\w.-]*")  # dimension names: they name files (plots) and params keys ("*" is the wildcard)


class Scale(BaseModel):
    """The rating scale: integer points `min`..`max` with a label per language.

    The score is read from the next-token distribution at the answer position, one token per point, so the
    model answers with one character per point: the point's digit by default (scales within 0-9), or the
    scale's `answers` (one ASCII letter or digit per point, e.g. A-K for a 0-10 scale, whose "10" is two
    digits). The prompt's options show these answers; ratings, metrics and scores keep the points.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: int
    max: int
    labels: dict[int, dict[str, str]]
    answers: dict[int, str] | None = None  # point -> the single character the model writes for it

    @model_validator(mode="after")
    def _labels_cover_scale(self) -> "Scale":
        if self.min < 0:
            raise ValueError("scale points must not be negative (min >= 0)")
        if self.min >= self.max or self.max - self.min + 1 > MAX_POINTS:
            raise ValueError(f"scale must span 2 to {MAX_POINTS} points (min < max, e.g. 0-10 at most)")
        if sorted(self.labels) != list(self.points):
            raise ValueError(f"scale labels must cover exactly {self.min}..{self.max}")
        if self.answers is None:
            if self.max > 9:
                raise ValueError(
                    f"scale point {self.max} has two digits, but a score is read from the next token over one "
                    f"token per point: give scale.answers, one character per point (e.g. {self.min}: A ... "
                    f"{self.max}: {chr(ord('A') + self.max - self.min)})")
            return self
        if sorted(self.answers) != list(self.points):
            raise ValueError(f"scale answers must cover exactly {self.min}..{self.max}")
        bad = [p for p, a in self.answers.items() if not _ANSWER.fullmatch(a)]
        if bad:
            raise ValueError(f"scale answer of point {bad[0]} must be one ASCII letter or digit")
        if len({a.casefold() for a in self.answers.values()}) != len(self.answers):
            raise ValueError("scale answers must be distinct (ignoring case)")
        return self

    @property
    def points(self) -> list[int]:
        return list(range(self.min, self.max + 1))

    @property
    def answer_symbols(self) -> list[str]:
        """What the model writes for each point, in scale order."""
        return [self.answer(p) for p in self.points]

    def answer(self, point: int) -> str:
        return self.answers[point] if self.answers is not None else str(point)


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    dimension: str | None = None  # None: the item is scored and evaluated on its own, in no dimension
    text: dict[str, str]


class Instrument(BaseModel):
    """A questionnaire: the items the client rated and the scale they used."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str = ""
    languages: list[str] = Field(min_length=1)
    scale: Scale
    dimensions: list[str] = Field(min_length=1)  # a single overall dimension is fine
    items: list[Item] = Field(min_length=1)
    prompts: dict[str, PromptTexts] = Field(default_factory=dict)  # wording per language beyond the shipped ones

    @model_validator(mode="after")
    def _consistent(self) -> "Instrument":
        ids = [i.id for i in self.items]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate item ids: {', '.join(dupes)}")
        bad = [d for d in self.dimensions if not _NAME.fullmatch(d)]
        if bad:
            raise ValueError(f"dimension name {bad[0]!r}: letters, digits, '_', '.' or '-' only, not starting with '.' or '-'")
        if len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError("duplicate dimension names")
        for item in self.items:
            if item.dimension is not None and item.dimension not in self.dimensions:
                raise ValueError(f"item {item.id}: dimension {item.dimension!r} is not in dimensions")
            missing = [lang for lang in self.languages if not item.text.get(lang, "").strip()]
            if missing:
                raise ValueError(f"item {item.id}: no text for language(s) {', '.join(missing)}")
        for dim in self.dimensions:
            if not any(i.dimension == dim for i in self.items):
                raise ValueError(f"dimension {dim!r} has no items")
        for lang, texts in self.prompts.items():
            if texts.language != lang:
                raise ValueError(f"prompts.{lang}: its language field says {texts.language!r}")
        missing = [lang for lang in self.languages if lang not in self.prompts and builtin_prompt_texts(lang) is None]
        if missing:
            raise ValueError(f"no prompt wording for language(s) {', '.join(missing)}: add prompts.{missing[0]} "
                             f"(the fields of care/data/prompts/en.yaml) to the instrument; shipped: "
                             f"{', '.join(builtin_languages())}")
        for point, labels in self.scale.labels.items():
            missing = [lang for lang in self.languages if not labels.get(lang, "").strip()]
            if missing:
                raise ValueError(f"scale label {point}: no text for language(s) {', '.join(missing)}")
        return self

    @property
    def item_ids(self) -> list[str]:
        return [i.id for i in self.items]

    @cached_property
    def items_by_dimension(self) -> dict[str, list[str]]:
        """Each dimension's item ids (items without a dimension are in none)."""
        return {d: [i.id for i in self.items if i.dimension == d] for d in self.dimensions}

    def item(self, item_id: str) -> Item:
        for i in self.items:
            if i.id == item_id:
                return i
        raise KeyError(item_id)

    def prompt_texts(self, language: str) -> PromptTexts:
        """The prompt wording for `language`: the instrument's own, else the shipped one."""
        texts = self.prompts.get(language) or builtin_prompt_texts(language)
        if texts is None or language not in self.languages:
            raise CareError(f"instrument {self.name}: no prompt wording for language {language!r} "
                            f"(its languages: {', '.join(self.languages)})")
        return texts

    def prompts_digest(self) -> str:
        """sha256 over the wording of every language of the instrument (prompts, caches and packages depend on it)."""
        import hashlib

        return hashlib.sha256("".join(self.prompt_texts(lang).digest() for lang in sorted(self.languages)).encode()).hexdigest()

    def dimension_scores(self, item_values: Mapping[str, float | None]) -> dict[str, float | None]:
        """Each dimension's score: the mean of its items' values; None where any of them is None."""
        out: dict[str, float | None] = {}
        for dim, ids in self.items_by_dimension.items():
            values = [item_values[i] for i in ids]
            out[dim] = None if any(v is None for v in values) else sum(values) / len(values)
        return out


def load_instrument(ref: str | Path | None = None) -> Instrument:
    """Load an instrument by built-in name (e.g. ``wai-sr``) or from a YAML file path."""
    ref = ref or DEFAULT_INSTRUMENT
    if str(ref) in BUILTIN:
        text = resources.files("care.data.instruments").joinpath(BUILTIN[str(ref)]).read_text("utf-8")
        source = f"<builtin {ref}>"
    else:
        path = Path(ref)
        if not path.is_file():
            raise CareError(f"{path}: instrument file not found (built-in names: {', '.join(BUILTIN)})")
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            raise CareError(f"{path}: instrument file is not UTF-8") from None
        source = str(path)
    return parse_instrument(text, source)


def parse_instrument(text: str, source: str) -> Instrument:
    """An instrument from YAML text (e.g. bytes a caller verified); `source` names it in errors."""
    data = load_yaml(text, source, "instrument")
    if not isinstance(data, dict):
        raise CareError(f"{source}: instrument must be a YAML mapping")
    try:
        return Instrument.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        loc = label(".".join(str(p) for p in first["loc"]) or "<root>", 120)
        raise CareError(f"{source}: instrument field={loc}: {label(first['msg'], 300)} "
                        f"({exc.error_count()} problem(s))") from None
    except RecursionError:
        raise CareError(f"{source}: instrument YAML is nested too deeply") from None


def instrument_path(ref: str | Path | None = None) -> Path | None:
    """The file behind an instrument reference, for copying into a release package."""
    ref = ref or DEFAULT_INSTRUMENT
    if str(ref) in BUILTIN:
        return Path(str(resources.files("care.data.instruments").joinpath(BUILTIN[str(ref)])))
    return Path(ref)


def load_instrument_verified(ref: str | Path | None = None) -> tuple[Instrument, str]:
    """The instrument and the sha256 of the very bytes it was parsed from (one read: no swap in between)."""
    import hashlib

    path = instrument_path(ref)
    if path is None or not path.is_file():
        raise CareError(f"{path}: instrument file not found (built-in names: {', '.join(BUILTIN)})")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CareError(f"{path}: instrument file is not UTF-8") from None
    source = f"<builtin {ref}>" if str(ref or DEFAULT_INSTRUMENT) in BUILTIN else str(path)
    return parse_instrument(text, source), hashlib.sha256(raw).hexdigest()
