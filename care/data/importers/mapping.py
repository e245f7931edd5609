"""The mapping file of `care import table`: where each field of the annotation format is in someone's data.

A small YAML file, validated with pydantic; a problem is one line naming the file and the field. Field
references are names: a CSV column, or a key of a JSON object, with dots for nesting (`survey.client.q1`).
See docs/examples/ja-alliance/mapping.yaml for a commented example.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from care.errors import CareError, label
from care.safe_yaml import load_yaml, read_yaml_bytes

Ref = Field(min_length=1)
ITEM = "{item}"  # in a ratings pattern: the item id


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SessionFields(_Strict):
    """Session-level fields (JSON: in each record; CSV: a column of the ratings file, else of the turns file)."""

    id: str = Ref
    client_id: str = Ref
    counselor_id: str | None = None
    language: str | None = None  # a field holding each session's language (else the mapping's `language`)
    context: str | None = None


class TurnFields(_Strict):
    """Where a session's turns are and what a turn holds. `path`: the list of turns in a JSON record (JSON
    shapes); `order`: a column of integers that orders a session's turn rows (CSV; default: file order)."""

    path: str | None = None
    speaker: str = Ref
    text: str = Ref
    time: str | None = None  # ISO 8601, kept as written (care validate checks it)
    order: str | None = None


class Speakers(_Strict):
    """Which speaker values are the counselor and the client; `ignore`: values whose turns are dropped (counted)."""

    counselor: list[str] = Field(min_length=1)
    client: list[str] = Field(min_length=1)
    ignore: list[str] = []

    @field_validator("counselor", "client", "ignore", mode="before")
    @classmethod
    def _as_strings(cls, value):
        return [str(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _disjoint(self) -> "Speakers":
        seen: dict[str, str] = {}
        for role in ("counselor", "client", "ignore"):
            for v in getattr(self, role):
                if v in seen and seen[v] != role:
                    raise ValueError(f"speaker value {label(v, 40)!r} is listed under both {seen[v]} and {role}")
                seen[v] = role
        return self


class CsvFiles(_Strict):
    """The CSV shape: PATH is a directory holding these two files (names relative to it)."""

    turns: str = "turns.csv"
    ratings: str = "ratings.csv"
    delimiter: str = Field(",", min_length=1, max_length=1)


class Mapping(_Strict):
    """A `care import table` mapping (see the module docstring)."""

    format: Literal["json_dir", "jsonl", "csv"]
    instrument: str = Ref  # built-in name or a YAML path (relative to the mapping file)
    language: str | None = None  # every session's language, unless session.language names a field
    session: SessionFields
    turns: TurnFields
    speakers: Speakers
    # item id -> field holding the client's rating, or one pattern for every item: "q{item}" (q1, q2, ...)
    client_ratings: dict[str, str] | str = {}
    counselor_ratings: dict[str, str] | str = {}
    rationales: dict[str, str] | str = {}
    helper_ratings: dict[str, str] = {}  # helper-side items (baselines only), name -> field
    ratings_required: bool = True  # false: a session with no client rating at all is kept unrated (care score)
    csv: CsvFiles = CsvFiles()

    @field_validator("client_ratings", "counselor_ratings", "rationales", "helper_ratings", mode="before")
    @classmethod
    def _string_keys(cls, value):
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("client_ratings", "counselor_ratings", "rationales")
    @classmethod
    def _pattern(cls, value):
        if isinstance(value, str) and ITEM not in value:
            raise ValueError(f"a pattern must contain {ITEM} (e.g. q{ITEM}), or give a mapping item id -> field")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Mapping":
        if (self.language is None) == (self.session.language is None):
            raise ValueError("give exactly one of language (every session's) and session.language (a field)")
        if self.format != "csv" and not self.turns.path:
            raise ValueError(f"format {self.format} needs turns.path: the field holding the list of turns")
        if self.format == "csv" and self.turns.path:
            raise ValueError("turns.path is for the JSON shapes; CSV turns are the rows of csv.turns")
        if self.ratings_required and not self.client_ratings:
            raise ValueError("client_ratings maps no item (set ratings_required: false for unrated sessions)")
        return self


def load_mapping(path: str | Path) -> tuple[Mapping, str]:
    """The validated mapping and the sha256 of its bytes; CareError (one line, file and field) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CareError(f"{path}: mapping file not found")
    raw = read_yaml_bytes(path, "mapping")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CareError(f"{path}: mapping file is not UTF-8") from None
    data = load_yaml(text, str(path), "mapping")
    if not isinstance(data, dict):
        raise CareError(f"{path}: mapping must be a YAML mapping (see docs/examples/ja-alliance/mapping.yaml)")
    try:
        mapping = Mapping.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        loc = label(".".join(str(p) for p in first["loc"]) or "<root>", 120)
        msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise CareError(f"{path}: mapping field={loc}: {label(msg, 300)} ({exc.error_count()} problem(s))") from None
    return mapping, hashlib.sha256(raw).hexdigest()


def item_fields(refs: dict[str, str] | str, item_ids: list[str]) -> dict[str, str]:
    """Item id -> field: the mapping as given, or the pattern filled in for every item."""
    return {i: refs.replace(ITEM, i) for i in item_ids} if isinstance(refs, str) else dict(refs)


def instrument_ref(mapping: Mapping, mapping_path: str | Path) -> str:
    """The mapping's instrument: a built-in name as is, a path relative to the mapping file's directory."""
    from care.data.instrument import BUILTIN

    if mapping.instrument in BUILTIN:
        return mapping.instrument
    ref = Path(mapping.instrument)
    return str(ref if ref.is_absolute() else Path(mapping_path).parent / ref)
