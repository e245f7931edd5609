"""The annotation format: one counseling session per JSONL line (see README "Annotation format").

Pydantic checks structure and types only; the content rules (ids unique, ratings on the scale, every item
rated, speakers, languages...) live in the validation suite, `care.data.validation`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, model_serializer


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    speaker: StrictStr
    text: StrictStr
    # optional: when the turn was sent, ISO 8601 (e.g. 2024-05-01T14:03:12+09:00); rules in care.data.timestamps
    time: StrictStr | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_time(self, handler):
        """A turn without a time serializes as before the field existed (files stay byte-identical)."""
        out = handler(self)
        if out.get("time") is None:
            out.pop("time", None)
        return out


class Session(BaseModel):
    """One annotated session. Ratings and rationales are keyed by instrument item id."""

    model_config = ConfigDict(extra="forbid")
    session_id: StrictStr
    client_id: StrictStr | None = None
    counselor_id: StrictStr | None = None
    language: StrictStr
    context: StrictStr | None = None  # the client's own description before the session, when recorded
    turns: list[Turn] = []
    client_ratings: dict[str, StrictInt] | None = None
    counselor_ratings: dict[str, StrictInt] | None = None
    rationales: dict[str, StrictStr] | None = None
    # Helper-side items that are not the instrument (e.g. ESConv's supporter item): baselines, never labels.
    helper_ratings: dict[str, StrictInt] | None = None

    def to_json(self) -> str:
        """The session as one JSONL line (no trailing newline), fields in schema order, nulls kept."""
        return self.model_dump_json()
