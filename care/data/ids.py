"""Identity hygiene: ids compared as a person reads them, so one client is one client.

`normalise_id` folds what a person does not see or does not read as a difference: Unicode compatibility
forms (NFKC: full-width letters, ligatures), format characters (category Cf: U+200B zero-width space, U+200D,
U+FEFF, bidi marks), surrounding whitespace and case. Grouping (client-grouped folds) and conflict checks
(validation, intake) use it; the data keeps the ids as written, and two spellings of one id are reported.
"""

from __future__ import annotations

import unicodedata

SPELLING = "case, surrounding spaces or invisible characters"


def normalise_id(value: str) -> str:
    """NFKC, format characters dropped, stripped, casefolded (and NFKC again: casefolding can denormalise)."""
    text = unicodedata.normalize("NFKC", value)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", text.strip().casefold())
