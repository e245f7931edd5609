"""ESConv (Liu et al. 2021) -> the annotation format, rated on the ``esconv-seeker`` instrument.

Both distributions of the corpus are read; the format is detected per file from its first non-blank
character:

- ``[``: the original format (one JSON array, e.g. ``FailedESConv.part-a.json``): turns
  ``{"speaker": "speaker" | "listener", "content": ...}``;
- ``{``: the "HF" format (one JSON object per line, e.g. ``train.json``): turns
  ``{"speaker": "usr" | "sys", "text": ...}``.

Mapping, per dialog:

- seeker (``usr`` / ``speaker``) -> ``client``, supporter (``sys`` / ``listener``) -> ``counselor``; turns
  keep their order (consecutive turns of one speaker stay separate); text is stripped, and turns left
  empty are dropped and counted;
- ``situation`` (the seeker's description before the chat) -> ``context``;
- ``session_id`` = ``esconv-{file stem}-{1-based position in the file}`` (stem lower-cased, runs of
  non-alphanumerics -> ``-``), stable whatever else is imported; ``client_id`` = ``session_id`` (every
  dialog is its own seeker); no counselor id; language ``en``;
- ``survey_score.seeker.empathy`` / ``.relevance`` -> ``client_ratings`` ``empathy`` / ``relevance`` as ints.
  A dialog without both is skipped (``incomplete_survey``); a value that is not an integer (the corpus
  stores digit strings; ``"4"`` and ``4`` are integers, ``"4.0"``, ``4.5``, ``" 4"`` and ``true`` are not) or
  is off the 1-5 scale is reported (session id and field, never the value) and the dialog skipped: never
  coerced;
- ``survey_score.supporter.relevance`` (the supporter's 0-5 item: how much the seeker went into detail)
  -> ``helper_ratings.supporter_detail``, a baseline and never a label (never ``counselor_ratings``). A
  value that is not an integer in 0-5 is reported and left out (the dialog is kept: its labels are fine);
- no rationales; strategies, emotion/problem types and the in-chat ``feedback`` are not imported.

``import.json`` holds counts and located problems only (file names, session ids, fields): no text and no
values. Output is byte-identical for the same input files, wherever they and the output live.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from care.data import strict_json
from care.errors import CareError, UsageError
from care.data.schema import Session, Turn

INSTRUMENT = "esconv-seeker"
LANGUAGE = "en"
SEEKER_ITEMS = ("empathy", "relevance")
SEEKER_SCALE = (1, 5)
HELPER_ITEM = "supporter_detail"
HELPER_SCALE = (0, 5)
FORMATS = {
    # name: (turn text key, {corpus speaker: annotation speaker})
    "hf-jsonl": ("text", {"usr": "client", "sys": "counselor"}),
    "original-json": ("content", {"speaker": "client", "listener": "counselor"}),
}
SKIP_REASONS = ("incomplete_survey", "off_scale", "malformed", "no_client_or_counselor_turn")
_DIGITS = re.compile(r"[0-9]+")


def slug(stem: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "file"


def _as_int(value: Any) -> int | None:
    """The integer a survey value stands for, or None when it is not one (no coercion of floats/spaces)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None


@dataclass
class FileReport:
    file: str
    format: str
    read: int = 0
    written: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {r: 0 for r in SKIP_REASONS})
    empty_turns_dropped: int = 0
    off_scale: dict[str, int] = field(default_factory=dict)  # field -> count (labels and helper item)
    helper_ratings_written: int = 0

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "format": self.format,
            "read": self.read,
            "written": self.written,
            "skipped": dict(self.skipped),
            "empty_turns_dropped": self.empty_turns_dropped,
            "off_scale": dict(sorted(self.off_scale.items())),
            "helper_ratings_written": self.helper_ratings_written,
        }


@dataclass
class ImportResult:
    sessions: list[Session]
    files: list[FileReport]
    problems: list[dict]  # {"file", "session_id", "field", "message"}: never a value or any text

    def report(self) -> dict:
        total: dict[str, Any] = {"read": 0, "written": 0, "skipped": {r: 0 for r in SKIP_REASONS},
                                 "empty_turns_dropped": 0, "off_scale": {}, "helper_ratings_written": 0}
        for f in self.files:
            total["read"] += f.read
            total["written"] += f.written
            total["empty_turns_dropped"] += f.empty_turns_dropped
            total["helper_ratings_written"] += f.helper_ratings_written
            for r, n in f.skipped.items():
                total["skipped"][r] += n
            for k, n in f.off_scale.items():
                total["off_scale"][k] = total["off_scale"].get(k, 0) + n
        total["off_scale"] = dict(sorted(total["off_scale"].items()))
        return {
            "corpus": "ESConv (Liu et al. 2021), CC BY-NC 4.0",
            "instrument": INSTRUMENT,
            "files": [f.to_dict() for f in self.files],
            "total": total,
            "problems": list(self.problems),
        }


# the corpus's own field names: problems show these, any other key by its position
_FIELDS = {"dialog", "speaker", "content", "text", "survey_score", "seeker", "supporter", "empathy", "relevance",
           "situation", "emotion_type", "problem_type", "experience_type", "annotation", "strategy", "feedback"}


def _located(exc: strict_json.JsonProblem) -> str:
    """`dialog N field=...: problem` (original format: the array's N-th dialog) or `field=...: problem`."""
    loc, data = exc.loc, exc.data
    if loc and isinstance(loc[0], int) and isinstance(data, list):
        inner = strict_json.path_label(loc[1:], data[loc[0]], _FIELDS)
        return f"dialog {loc[0] + 1} field={inner}: {exc.message}"
    return f"field={strict_json.path_label(loc, data, _FIELDS)}: {exc.message}"


def _records(path: Path) -> tuple[str, list[Any]]:
    """(format name, records) of one corpus file; CareError for a file that is neither format."""
    from care.data.reader import read_limited

    if not path.is_file():
        raise CareError(f"{path}: no such file")
    try:
        text = read_limited(path).decode("utf-8")  # refused from its size first (data.limits defaults)
    except UnicodeDecodeError:
        raise CareError(f"{path}: not UTF-8") from None
    text = text.lstrip("\ufeff")
    head = text.lstrip()[:1]
    if head == "[":
        try:
            data = strict_json.loads(text)
        except strict_json.JsonProblem as exc:
            raise CareError(f"{path}: {_located(exc)} (original ESConv format)") from None
        except json.JSONDecodeError as exc:
            raise CareError(f"{path}:{exc.lineno}: not valid JSON (original ESConv format)") from None
        except RecursionError:
            raise CareError(f"{path}: JSON nested too deeply (original ESConv format)") from None
        if not isinstance(data, list):
            raise CareError(f"{path}: expected a JSON array of dialogs")
        return "original-json", data
    if head == "{":
        records = []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a string
            if not line.strip():
                continue
            try:
                records.append(strict_json.loads(line))
            except strict_json.JsonProblem as exc:
                raise CareError(f"{path}:{n}: {_located(exc)} (HF ESConv format)") from None
            except (json.JSONDecodeError, RecursionError):
                raise CareError(f"{path}:{n}: not valid JSON (HF ESConv format: one object per line)") from None
        return "hf-jsonl", records
    raise CareError(f"{path}: empty or not ESConv (expected a JSON array or one JSON object per line)")


def _convert(record: Any, sid: str, fmt: str, rep: FileReport, problems: list[dict]) -> Session | None:
    def problem(fld: str, message: str) -> None:
        problems.append({"file": rep.file, "session_id": sid, "field": fld, "message": message})

    def skip(reason: str) -> None:
        rep.skipped[reason] += 1

    if not isinstance(record, dict) or not isinstance(record.get("dialog"), list):
        problem("dialog", "record is not an object with a dialog list")
        skip("malformed")
        return None
    survey = record.get("survey_score")
    survey = survey if isinstance(survey, dict) else {}
    seeker = survey.get("seeker") if isinstance(survey.get("seeker"), dict) else {}
    supporter = survey.get("supporter") if isinstance(survey.get("supporter"), dict) else {}

    # labels: both items present, integer, on the scale; otherwise report (off-scale) and skip
    ratings: dict[str, int] = {}
    missing = False
    bad = False
    lo, hi = SEEKER_SCALE
    for item in SEEKER_ITEMS:
        raw = seeker.get(item)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            missing = True
            continue
        value = _as_int(raw)
        fld = f"survey_score.seeker.{item}"
        if value is None:
            problem(fld, "not an integer")
        elif not lo <= value <= hi:
            problem(fld, f"outside the scale {lo}-{hi}")
        else:
            ratings[item] = value
            continue
        rep.off_scale[fld] = rep.off_scale.get(fld, 0) + 1
        bad = True
    if missing:
        skip("incomplete_survey")
        return None
    if bad:
        skip("off_scale")
        return None

    # turns
    text_key, speakers = FORMATS[fmt]
    turns: list[Turn] = []
    for i, turn in enumerate(record["dialog"]):
        if not isinstance(turn, dict) or turn.get("speaker") not in speakers or not isinstance(turn.get(text_key), str):
            problem(f"dialog[{i}]", f"turn is not {{speaker: {' | '.join(speakers)}, {text_key}: string}}")
            skip("malformed")
            return None
        text = turn[text_key].strip()
        if not text:
            rep.empty_turns_dropped += 1
            continue
        turns.append(Turn(speaker=speakers[turn["speaker"]], text=text))
    if not {"client", "counselor"} <= {t.speaker for t in turns}:
        problem("dialog", "no seeker turn or no supporter turn with text")
        skip("no_client_or_counselor_turn")
        return None

    # the supporter's own item: a baseline, never a label
    helper = None
    raw = supporter.get("relevance")
    if raw is not None and not (isinstance(raw, str) and not raw.strip()):
        value = _as_int(raw)
        fld = "survey_score.supporter.relevance"
        hlo, hhi = HELPER_SCALE
        if value is None or not hlo <= value <= hhi:
            problem(fld, "not an integer" if value is None else f"outside the scale {hlo}-{hhi}")
            rep.off_scale[fld] = rep.off_scale.get(fld, 0) + 1
        else:
            helper = {HELPER_ITEM: value}
            rep.helper_ratings_written += 1

    situation = record.get("situation")
    context = situation.strip() if isinstance(situation, str) and situation.strip() else None
    return Session(
        session_id=sid,
        client_id=sid,
        counselor_id=None,
        language=LANGUAGE,
        context=context,
        turns=turns,
        client_ratings={item: ratings[item] for item in SEEKER_ITEMS},
        counselor_ratings=None,
        rationales=None,
        helper_ratings=helper,
    )


def import_esconv(paths: list[str | Path]) -> ImportResult:
    """Read ESConv files (either format, detected per file) into sessions, in file and record order."""
    if not paths:
        raise UsageError("give at least one ESConv file")
    paths = [Path(p) for p in paths]
    stems: dict[str, Path] = {}
    for p in paths:
        s = slug(p.name[:-5] if p.name.endswith(".json") else p.stem)
        if s in stems:
            raise UsageError(f"{p}: its session ids (esconv-{s}-...) would collide with {stems[s]}'s; "
                             "import files with distinct names")
        stems[s] = p
    sessions: list[Session] = []
    files: list[FileReport] = []
    problems: list[dict] = []
    for s, p in stems.items():
        fmt, records = _records(p)
        rep = FileReport(file=p.name, format=fmt)
        width = max(5, len(str(len(records))))
        for n, record in enumerate(records, 1):
            rep.read += 1
            session = _convert(record, f"esconv-{s}-{n:0{width}d}", fmt, rep, problems)
            if session is not None:
                sessions.append(session)
                rep.written += 1
        files.append(rep)
    return ImportResult(sessions=sessions, files=files, problems=problems)


def write_import(paths: list[str | Path], out: str | Path) -> dict:
    """Import ``paths`` and write ``out/sessions.jsonl`` and ``out/import.json`` (each atomically).

    Returns the report. Raises CareError when no dialog could be imported (nothing is written then). `out` must
    be absent, empty or an earlier import (its import.json says so): checked before anything is read.
    """
    from care.fsutil import atomic_write_json, atomic_write_lines, check_output_dir

    check_output_dir(out, "import.json", lambda doc: isinstance(doc, dict) and doc.get("instrument") == INSTRUMENT
                     and str(doc.get("corpus", "")).startswith("ESConv"), "`care import esconv`")
    result = import_esconv(paths)
    report = result.report()
    if not result.sessions:
        raise CareError(f"no dialog imported from {len(result.files)} file(s): "
                        f"skipped {report['total']['skipped']}")
    out = Path(out)
    atomic_write_lines(out / "sessions.jsonl", [s.to_json() for s in result.sessions])
    atomic_write_json(out / "import.json", report)
    return report
