"""Each step's own cache directory when `CARE_STEP_SCRATCH` is set, as separate pods would have."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

from steps.materializers import SCRATCH_ENV


@contextlib.contextmanager
def step_cache() -> Iterator[None]:
    """Point `CARE_CACHE_DIR` at a fresh empty directory for the step's body (no-op unless the env var is set).

    The directory is kept: the step's outputs are saved to the artifact store after the body returns.
    """
    root = os.environ.get(SCRATCH_ENV)
    if not root:
        yield
        return
    previous = os.environ.get("CARE_CACHE_DIR")
    os.environ["CARE_CACHE_DIR"] = tempfile.mkdtemp(prefix="step-cache-", dir=root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("CARE_CACHE_DIR", None)
        else:
            os.environ["CARE_CACHE_DIR"] = previous
