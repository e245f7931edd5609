"""Prompt wording as data: per language, the "answer as the client" instruction, how an item and its options
are shown, speaker labels and the quote marks rationales use.

zh and en ship as `care/data/prompts/{language}.yaml`. An instrument adds or replaces a language with a
`prompts: {language: {...}}` mapping of the same fields (so a new language is YAML only), and is refused
when one of its languages has no wording (`care.data.instrument`).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, field_validator

from care.errors import CareError
from care.safe_yaml import load_yaml

PACKAGE = "care.data.prompts"


class Speakers(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    counselor: str = Field(min_length=1)
    client: str = Field(min_length=1)


class PromptTexts(BaseModel):
    """The wording of one language's prompts (see care/data/prompts/en.yaml for each field)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    language: str = Field(min_length=1)
    system: str = Field(min_length=1)
    instruction: str = Field(min_length=1)
    context: str
    speakers: Speakers
    colon: str
    item: str
    option: str
    sep: str
    quotes: list[tuple[str, str]] = Field(min_length=1)

    @field_validator("item")
    @classmethod
    def _item_fields(cls, value: str) -> str:
        return _placeholders(value, "{text}", "{options}")

    @field_validator("option")
    @classmethod
    def _option_fields(cls, value: str) -> str:
        return _placeholders(value, "{point}", "{label}")

    @field_validator("quotes")
    @classmethod
    def _quote_marks(cls, value: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if any(not o or not c for o, c in value):
            raise ValueError("every quote pair needs an opening and a closing mark")
        return value

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _placeholders(value: str, *names: str) -> str:
    missing = [n for n in names if n not in value]
    if missing:
        raise ValueError(f"must contain {' and '.join(missing)}")
    try:
        value.format(**{n.strip("{}"): "" for n in names})
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"only the placeholders {', '.join(names)} may appear in braces") from None
    return value


@lru_cache(maxsize=None)
def builtin_prompt_texts(language: str) -> PromptTexts | None:
    """The shipped wording for `language`, or None when none ships."""
    name = f"{language}.yaml"
    files = resources.files(PACKAGE)
    if not language.isidentifier() or not files.joinpath(name).is_file():
        return None
    data = load_yaml(files.joinpath(name).read_text("utf-8"), f"<builtin prompts {language}>", "prompt wording")
    try:
        return PromptTexts.model_validate(data)
    except Exception as exc:  # a broken shipped file is a bug, said in one line
        raise CareError(f"<builtin prompts {language}>: invalid ({type(exc).__name__})") from None


def builtin_languages() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files(PACKAGE).iterdir() if p.name.endswith(".yaml"))
