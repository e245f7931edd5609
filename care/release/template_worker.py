"""The chat-template worker: renders a package's chat template in a separate, memory-limited process.

Started by `care.release.template_sandbox` as `python -I template_worker.py` (stdlib and jinja2 only: it
imports nothing of the project). Requests and answers are length-prefixed JSON on stdin/stdout. The
template runs in jinja2's ImmutableSandboxedEnvironment with the globals transformers gives chat templates;
output beyond the request's limit is refused. An error is answered with its kind only (an exception class
name): never a message, which a template can fill with transcript text through `raise_exception`.
"""

import json
import resource
import struct
import sys
from datetime import datetime

MEMORY_LIMIT = 2 << 30


class TemplateRaised(Exception):
    """The template called raise_exception (its message is dropped)."""


def _environment():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):  # `{% generation %}` blocks render their body unchanged
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):  # noqa: ARG001 - the message is never kept
        raise TemplateRaised()

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def _read(stream):
    head = stream.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(stream.read(n).decode("utf-8"))


def _write(stream, obj):
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    stream.write(struct.pack(">I", len(data)) + data)
    stream.flush()


def _render(template, request):
    variables = dict(request["variables"])
    day = request.get("strftime_date")
    clock = datetime.fromisoformat(day or request["now"])
    variables["strftime_now"] = clock.strftime
    limit, size, parts = int(request["limit"]), 0, []
    for chunk in template.generate(**variables):
        size += len(chunk)
        if size > limit:
            return {"error": "output_limit"}
        parts.append(chunk)
    return {"text": "".join(parts)}


def main():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but answers reaches the protocol stream
    env, template = _environment(), None
    while True:
        request = _read(inp)
        if request is None:
            return
        try:
            if request["op"] == "compile":
                template = env.from_string(request["template"])
                answer = {"ok": True}
            else:
                answer = _render(template, request)
        except TemplateRaised:
            answer = {"error": "raise_exception"}
        except MemoryError:
            answer = {"error": "memory"}
        except RecursionError:
            answer = {"error": "recursion"}
        except Exception as exc:  # noqa: BLE001 - reported by class name only
            answer = {"error": type(exc).__name__}
        _write(out, answer)


if __name__ == "__main__":
    main()
