"""The registry's promotion lock: one promotion of a model at a time, on a local store or a ZenML server.

The lock is a ZenML tag with a name unique to the model: creating it is an atomic compare-and-set in the
store's database (a unique constraint). It is deleted by its id on exit; one older than `LOCK_STALE_S` was
left by a crashed promotion and is deleted by id and retaken.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time
from datetime import datetime, timezone
from typing import Iterator

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")

from zenml.client import Client  # noqa: E402

from care.errors import CareError  # noqa: E402

LOCK_WAIT_S = 60.0  # how long a promotion waits for another one to finish
LOCK_STALE_S = 300.0  # a promotion lock older than this was left by a crashed promotion and is taken over


def _age_s(created: datetime | None) -> float:
    if created is None:
        return 0.0
    if created.tzinfo is None:  # ZenML stores UTC without a zone
        created = created.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - created).total_seconds()


def _lock_name(model_name: str) -> str:
    return f"care-promotion-lock-{hashlib.sha256(model_name.encode()).hexdigest()[:32]}"


@contextlib.contextmanager
def promotion_lock(client: Client, model_name: str, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the registry's promotion lock of `model_name` (waiting up to `wait_s` seconds for another holder;
    see the module docstring)."""
    from zenml.exceptions import EntityExistsError

    name = _lock_name(model_name)
    deadline = time.monotonic() + wait_s
    pause = 0.05
    while True:
        try:
            lock = client.create_tag(name=name)
            break
        except EntityExistsError:
            try:
                held = client.get_tag(name, allow_name_prefix_match=False)
            except KeyError:  # released between the two calls
                continue
            age = _age_s(held.created)
            if age > LOCK_STALE_S:
                with contextlib.suppress(KeyError):
                    client.delete_tag(held.id)  # by id: a lock retaken meanwhile is never deleted
                continue
            if time.monotonic() >= deadline:
                raise CareError(f"model {model_name!r}: another promotion holds the registry's promotion lock (taken "
                                f"{age:.0f} s ago) and did not finish within {wait_s:.0f} s; nothing changed. Try again; "
                                f"a lock left by a crashed promotion is taken over {LOCK_STALE_S:.0f} s after it was "
                                "taken") from None
            time.sleep(pause * (1 + random.random()))
            pause = min(pause * 2, 1.0)
    try:
        yield
    finally:
        with contextlib.suppress(KeyError):
            client.delete_tag(lock.id)
