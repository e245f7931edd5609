"""Identity hygiene: ids compared as a person reads them, so one client is one client.

`normalise_id` gives the key two ids are compared by. It folds what a person does not see or does not read
as a difference: Unicode compatibility forms (NFKC: full-width letters, ligatures), format characters
(category Cf: U+200B zero-width space, U+200D, U+FEFF, bidi marks), surrounding whitespace and case
(`readable_id`), and then look-alike characters by the Unicode UTS #39 confusables skeleton (ICU's
SpoofChecker; Latin "c0040", Cyrillic "с0040" and "cο04O" with a Greek omicron are one id), casefolded again.
Grouping (client-grouped folds) and conflict checks (validation, intake) use it; the data keeps the ids as
written, and two spellings of one id are reported.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

SPELLING = "case, surrounding spaces, invisible characters or look-alike letters"


@lru_cache(maxsize=1)
def _spoof_checker():
    import icu  # pyicu-wheels: PyICU with ICU built in

    return icu.SpoofChecker()


def readable_id(value: str) -> str:
    """NFKC, format characters dropped, stripped, casefolded (and NFKC again: casefolding can denormalise)."""
    text = unicodedata.normalize("NFKC", value)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFKC", text.strip().casefold())


def normalise_id(value: str) -> str:
    """The comparison key of an id: the UTS #39 skeleton of `readable_id`, casefolded (a skeleton keeps case:
    "0" becomes "O")."""
    return _spoof_checker().getSkeleton(0, readable_id(value)).casefold()
