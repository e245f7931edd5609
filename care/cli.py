"""The `care` command line: thin wrappers over the library. Heavy imports stay inside the commands."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from care.errors import CareError

os.environ.setdefault("ZENML_ANALYTICS_OPT_IN", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
models_app = typer.Typer(no_args_is_help=True, help="The model registry: list, show, promote, pull.")
annotations_app = typer.Typer(no_args_is_help=True, help="Add annotated sessions to the DVC-tracked data.")
import_app = typer.Typer(no_args_is_help=True, help="Import public corpora into the annotation format.")
app.add_typer(models_app, name="models")
app.add_typer(annotations_app, name="annotations")
app.add_typer(import_app, name="import")


def fail(message: str, code: int = 1) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def handles_errors(fn: Callable) -> Callable:
    """Turn CareError into its message on stderr and its exit code (1 bad input, 2 usage)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from care.fsutil import private_umask

        private_umask()
        try:
            return fn(*args, **kwargs)
        except CareError as exc:
            fail(f"error: {exc}", exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


@app.command()
@handles_errors
def synth(
    out: Path = typer.Option(..., "--out", help="Directory for sessions.jsonl and card.json."),
    sessions: int = typer.Option(400, "--sessions", min=1, help="Number of sessions."),
    clients: Optional[int] = typer.Option(None, "--clients", min=1, help="Number of clients (default: sessions / 5)."),
    language: str = typer.Option("zh", "--language", help="zh or en."),
    seed: int = typer.Option(0, "--seed"),
    utterances: int = typer.Option(24, "--utterances", min=10, help="Mean utterances per session."),
) -> None:
    """Write a synthetic annotated corpus (byte-identical for the same arguments)."""
    from care.synth import write_corpus

    card = write_corpus(out, n_sessions=sessions, n_clients=clients, language=language, seed=seed,
                        mean_utterances=utterances)
    typer.echo(f"wrote {card['n_sessions']} sessions from {card['n_clients']} clients to {out}")


@app.command()
@handles_errors
def validate(
    path: Path = typer.Argument(..., help="JSONL annotation file."),
    instrument: Optional[str] = typer.Option(None, "--instrument", help="Instrument YAML or built-in name."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a JSON report (counts and problems only)."),
) -> None:
    """Validate an annotation file; one line per problem, exit 1 when invalid."""
    from care.validation import validate_file

    result = validate_file(path, instrument=instrument, report_path=report)
    for problem in result.problems:
        typer.echo(str(problem), err=True)
    if result.problems:
        fail(f"{path}: {len(result.problems)} problem(s) in {result.n_lines} line(s)")
    typer.echo(f"{path}: {result.n_sessions} sessions valid")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
