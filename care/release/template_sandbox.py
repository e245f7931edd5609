"""Render an untrusted chat template (from a release package) with bounded time, memory and output.

A package's `chat_template.jinja` is code from whoever built the package. It is rendered in a separate
process (`care.release.template_worker`: jinja2's sandbox, 2 GiB address space), each render within
`RENDER_TIMEOUT_S` seconds (the worker is killed and the render refused otherwise) and at most
`4 x input + 256 KiB` characters of output. A failed render raises CareError naming only what went wrong
(raise_exception, a time-out, too much output, an error class): never the template's message or any rendered
text, which can hold transcript text.
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import time
import weakref
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable

from care.errors import CareError

RENDER_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0
_WORKER = Path(__file__).with_name("template_worker.py")
_WHY = {
    "raise_exception": "it called raise_exception (its message is not shown: it could hold transcript text)",
    "output_limit": "its output exceeded the limit",
    "memory": "it ran out of its memory limit",
    "recursion": "it recursed too deeply",
}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


class SandboxedTemplate:
    """A chat template compiled in its own worker process; `render(**variables)` returns the text."""

    def __init__(self, source: str, where: str = "chat template", timeout_s: float | None = None):
        self.where = where
        self.timeout_s = timeout_s or RENDER_TIMEOUT_S
        self._source = source
        self._proc: subprocess.Popen | None = None
        self._finalizer: Callable | None = None
        self._start()

    def _start(self) -> None:
        proc = subprocess.Popen([sys.executable, "-I", str(_WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, close_fds=True)
        self._proc = proc
        self._finalizer = weakref.finalize(self, _stop, proc)
        self._ask({"op": "compile", "template": self._source}, START_TIMEOUT_S, "does not compile")

    def _kill(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None

    def _ask(self, request: dict[str, Any], timeout_s: float, failing: str) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        data = json.dumps(request, ensure_ascii=False).encode("utf-8")
        try:
            proc.stdin.write(struct.pack(">I", len(data)) + data)
            proc.stdin.flush()
            answer = json.loads(self._receive(proc, time.monotonic() + timeout_s).decode("utf-8"))
        except TimeoutError:
            self._kill()
            raise CareError(f"{self.where}: rendering did not finish within {timeout_s:g} s; refusing the package") from None
        except (OSError, ValueError, EOFError):
            self._kill()
            raise CareError(f"{self.where}: the template worker stopped (a template that exhausts its limits); "
                            "refusing the package") from None
        if "error" in answer:
            kind = str(answer["error"])
            why = _WHY.get(kind, f"{kind} (the template's own message is not shown)")
            raise CareError(f"{self.where}: the chat template {failing}: {why}; refusing the package")
        return answer

    @staticmethod
    def _receive(proc: subprocess.Popen, deadline: float) -> bytes:
        fd = proc.stdout.fileno()
        buf = b""
        need = 4
        size = None
        while len(buf) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, max(need - len(buf), 1 << 16))
            if not chunk:
                raise EOFError
            buf += chunk
            if size is None and len(buf) >= 4:
                (size,) = struct.unpack(">I", buf[:4])
                need = 4 + size
        return buf[4:need]

    def render(self, *, strftime_date: date | None = None, now: datetime | None = None, **variables: Any) -> str:
        """The rendered text. `strftime_date` pins what `strftime_now` answers; else it answers `now`."""
        if self._proc is None:
            self._start()
        try:
            payload = json.dumps(variables, ensure_ascii=False)
        except (TypeError, ValueError):
            raise CareError(f"{self.where}: template variables must be plain data") from None
        request = {"op": "render", "variables": json.loads(payload),
                   "strftime_date": strftime_date.isoformat() if strftime_date else None,
                   "now": (now or datetime.now()).isoformat(), "limit": 4 * len(payload) + (256 << 10)}
        return str(self._ask(request, self.timeout_s, "failed to render")["text"])

    def close(self) -> None:
        self._kill()
