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

# A traceback never shows local variables (they can hold transcripts); older typer versions showed them by default.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="CARE: predict how the client experienced a counseling session (working alliance), item by item.")
models_app = typer.Typer(no_args_is_help=True, help="The model registry: list, show, promote, pull.")
annotations_app = typer.Typer(no_args_is_help=True, help="Add annotated sessions to the DVC-tracked data.")
import_app = typer.Typer(no_args_is_help=True, help="Import your own data (a mapping) or public corpora into the annotation format.")
base_app = typer.Typer(no_args_is_help=True, help="The embedded `tiny` base: build it, or print a base's digest.")
app.add_typer(models_app, name="models")
app.add_typer(annotations_app, name="annotations")
app.add_typer(import_app, name="import")
app.add_typer(base_app, name="base")


def fail(message: str, code: int = 1) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def handles_errors(fn: Callable) -> Callable:
    """Turn CareError into its message on stderr and its exit code (1 bad input, 2 usage); an OSError that no
    writer turned into a CareError still ends as one line naming its path and reason, never a traceback."""

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
        except OSError as exc:
            where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None) or "?"
            fail(f"error: {where}: {exc.strerror or type(exc).__name__}")

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
    from care.data.synth import write_corpus

    card = write_corpus(out, n_sessions=sessions, n_clients=clients, language=language, seed=seed,
                        mean_utterances=utterances)
    typer.echo(f"wrote {card['n_sessions']} sessions from {card['n_clients']} clients to {out}")


@app.command()
@handles_errors
def validate(
    path: Path = typer.Argument(..., help="JSONL annotation file."),
    instrument: Optional[str] = typer.Option(None, "--instrument", help="Instrument YAML or built-in name "
                                             "(default: data.instrument in the params file)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a JSON report (counts and problems only)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Params file giving data.instrument."),
) -> None:
    """Validate an annotation file; one line per problem, exit 1 when invalid."""
    from care.data.validation import validate_file
    from care.params import load_params

    data = load_params(params).data
    result = validate_file(path, instrument=instrument or data.instrument, report_path=report, limits=data.limits,
                           record=True)
    for problem in result.problems:
        typer.echo(str(problem), err=True)
    if result.problems:
        fail(f"{path}: {len(result.problems)} problem(s) in {result.n_lines} line(s)")
    typer.echo(f"{path}: {result.n_sessions} sessions valid")


@import_app.command("esconv")
@handles_errors
def import_esconv_cmd(
    paths: List[Path] = typer.Argument(..., metavar="PATH...", help="ESConv files: HF line-JSON (train.json, valid.json) "
                                                                     "or the original JSON array (FailedESConv*.json)."),
    out: Path = typer.Option(..., "--out", help="Directory for sessions.jsonl and import.json (counts only)."),
) -> None:
    """Import ESConv dialogs rated by the seeker (instrument esconv-seeker); byte-identical on re-import."""
    from care.data.importers.esconv import INSTRUMENT, write_import

    report = write_import(paths, out)
    total = report["total"]
    for f in report["files"]:
        typer.echo(f"{f['file']} ({f['format']}): read {f['read']}, written {f['written']}, "
                   f"skipped {sum(f['skipped'].values())} {f['skipped']}", err=True)
    if total["off_scale"]:
        typer.echo(f"off-scale or non-integer values (reported in {out / 'import.json'}): {total['off_scale']}", err=True)
    typer.echo(f"wrote {total['written']} of {total['read']} dialog(s) to {out / 'sessions.jsonl'} "
               f"(instrument {INSTRUMENT})")


@import_app.command("table")
@handles_errors
def import_table_cmd(
    path: Path = typer.Argument(..., metavar="PATH", help="A directory of JSON files (one session each), a JSONL file, "
                                                          "or a directory with a turns CSV and a ratings CSV."),
    mapping: Path = typer.Option(..., "--map", help="Mapping YAML: where each field is (docs/examples/ja-alliance/mapping.yaml)."),
    out: Path = typer.Option(..., "--out", help="New or empty directory (or an earlier import) for sessions.jsonl "
                                                "and import.json (counts and located problems only)."),
) -> None:
    """Import sessions from your own data with a mapping file; byte-identical on re-import, never prints text."""
    from care.data.importers.table import REPORT, write_import

    report = write_import(path, mapping, out)
    shown = 20
    for p in report["problems"][:shown]:
        typer.echo(f"{p['source']} session={p['session_id']} field={p['field']}: {p['message']}", err=True)
    if len(report["problems"]) > shown:
        typer.echo(f"... and {len(report['problems']) - shown} more problem(s) in {out / REPORT}", err=True)
    counts = lambda d: ", ".join(f"{k} {v}" for k, v in d.items() if v) or "none"  # noqa: E731
    typer.echo(f"skipped sessions: {counts(report['skipped'])}; dropped turns: {counts(report['dropped_turns'])}", err=True)
    typer.echo(f"wrote {report['written']} of {report['read']} session(s) to {out / 'sessions.jsonl'} "
               f"(instrument {report['instrument']})")


# ------------------------------------------------------------------------------ care base


@base_app.command("build")
@handles_errors
def base_build_cmd(
    out: Path = typer.Option(..., "--out", help="Directory to write the base into (replaced only when complete)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Params file giving model.base_build."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override a param: KEY=VALUE (repeatable)."),
) -> None:
    """Pretrain the embedded base (model.base_build); resumes from OUT.checkpoint/ after an interruption."""
    from care.model.base_build import build_base
    from care.model.base_files import base_digest, check_base_out
    from care.params import load_params

    p = load_params(params, overrides)
    check_base_out(out)
    card = build_base(p, out)
    digest = base_digest(out)
    typer.echo(f"built {out}: {card['parameters']:,} parameters, {card['pretrain_tokens']:,} pretraining tokens, "
               f"held-out loss {card['heldout_loss']}, {card['build_seconds']} s")
    typer.echo(f"digest {digest}")
    typer.echo(f"to use it: set model.tiny_base.path: {out} and model.tiny_base.digest: {digest} in {params}")


@base_app.command("digest")
@handles_errors
def base_digest_cmd(path: Path = typer.Argument(..., help="A base directory.")) -> None:
    """Print the content digest the tiny preset checks (model.tiny_base.digest)."""
    from care.model.base_files import base_digest

    if not path.is_dir():
        raise CareError(f"{path}: not a directory")
    typer.echo(base_digest(path))


# ------------------------------------------------------------------------------ care annotations add
# The rules (validation, ids, client conflicts, atomic append, `dvc add`) live in care.data.intake.


@annotations_app.command("add")
@handles_errors
def annotations_add(
    new: Path = typer.Argument(..., metavar="NEW.jsonl", help="Sessions to add (annotation format)."),
    data: Path = typer.Option(Path("data"), "--data", help="DVC-tracked data directory holding sessions.jsonl."),
    instrument: Optional[str] = typer.Option(None, "--instrument", help="Instrument YAML or built-in name "
                                             "(default: data.instrument in the params file)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Params file giving data.instrument."),
    wait: float = typer.Option(0.0, "--wait", min=0, help="Seconds to wait for a training run (or another intake) "
                                                          "on the same data to finish; refused at once by default."),
) -> None:
    """Validate NEW.jsonl, append it atomically to DIR/sessions.jsonl and `dvc add DIR`; nothing changes on refusal."""
    from care.errors import InvalidData
    from care.data.intake import add_annotations
    from care.params import load_params

    try:
        data_params = load_params(params).data
        res = add_annotations(new, data_dir=data, instrument=instrument or data_params.instrument, wait_s=wait,
                              limits=data_params.limits)
    except InvalidData as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        fail(f"{new}: {len(exc.problems)} problem(s); nothing added, {data} unchanged")
    typer.echo(f"added {res.n_added} session(s) ({res.n_new_clients} new client(s)) to {res.sessions_path}: "
               f"{res.n_total} in all")
    typer.echo(f"data md5 {res.old_md5} -> {res.new_md5} ({res.dvc_file.name} updated); "
               f"share it: git add {res.dvc_file.name} && git commit && dvc push")


# ------------------------------------------------------------------------------ care models (registry)
# The rules live in care.registry.promotion; ZenML is reached only through zenml_registry.client, imported lazily.

_MODEL_NAME_OPT = typer.Option(None, "--model-name", help="Registered model name (default: registry.model_name in params).")
_PARAMS_OPT = typer.Option(Path("params.yaml"), "--params", help="Params file giving registry.model_name.")


def _registry(params: Path, model_name: Optional[str]):
    """(zenml_registry.client module, model name); the ZenML import happens here, not at CLI start-up."""
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")
    from care.params import checked_model_name, load_params

    name = checked_model_name(model_name) if model_name is not None else load_params(params).registry.model_name
    from zenml_registry import client as registry

    return registry, name


@models_app.command("list")
@handles_errors
def models_list(
    model_name: Optional[str] = _MODEL_NAME_OPT,
    params: Path = _PARAMS_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List versions: version, stage, created, gate, key metrics (mean Pearson / MSE), data version."""
    import json

    from care.registry.promotion import several_holders_message, stage_conflicts

    registry, name = _registry(params, model_name)
    rows = registry.list_versions(name)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(f"model {name}: {len(rows)} version(s)")
        _print_versions(rows)
    for stage, versions in stage_conflicts(rows).items():  # listed in full above; the state is refused
        raise CareError(several_holders_message(name, stage, versions))


_VERSION_COLUMNS = ("version", "stage", "created", "gate_passed", "key_metrics", "data_version")


def _print_versions(rows: list[dict]) -> None:
    """The versions as a table on stdout: one row each, `-` for a missing value, never wrapped or cut."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def cell(row: dict, column: str) -> Text:  # Text: a value is never read as rich markup
        value = row.get(column)
        dirty = " (dirty)" if column == "data_version" and row.get("data_dirty") else ""
        return Text("-" if value is None else f"{value}{dirty}")

    table = Table(*_VERSION_COLUMNS, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*(cell(row, c) for c in _VERSION_COLUMNS))
    width = Console(width=1 << 16).measure(table).maximum  # the table's natural width, whatever the terminal's
    Console(width=width, highlight=False, emoji=False).print(table)


@models_app.command("show")
@handles_errors
def models_show(
    version: Optional[str] = typer.Argument(None, help="Version number."),
    stage: Optional[str] = typer.Option(None, "--stage", help="staging or production (instead of a version)."),
    model_name: Optional[str] = _MODEL_NAME_OPT,
    params: Path = _PARAMS_OPT,
) -> None:
    """Print all metadata of one version (by number or by stage) as JSON."""
    import json

    registry, name = _registry(params, model_name)
    typer.echo(json.dumps(registry.show_version(name, version=version, stage=stage), indent=2, sort_keys=True))


@models_app.command("promote")
@handles_errors
def models_promote(
    version: str = typer.Argument(..., help="Version number to promote."),
    stage: str = typer.Option(..., "--stage", help="staging, production or archived."),
    force: bool = typer.Option(False, "--force", help="Promote to production even when worse than the holder "
                                                       "(never overrides a failed gate)."),
    model_name: Optional[str] = _MODEL_NAME_OPT,
    params: Path = _PARAMS_OPT,
) -> None:
    """Move a version to a stage; production only when not worse than the current holder (or --force)."""
    registry, name = _registry(params, model_name)
    try:
        decision = registry.promote(version, stage, name, force=force)
    except CareError as exc:
        refused = getattr(exc, "decision", None)
        if refused is not None and refused.comparison is not None:
            typer.echo(refused.comparison.table())
        raise
    if decision.comparison is not None:
        typer.echo(decision.comparison.table())
    typer.echo(f"{name} version {version} -> {stage}: {decision.reason}")


@models_app.command("pull")
@handles_errors
def models_pull(
    out: Path = typer.Option(..., "--out", help="Directory to create (must not exist or be empty)."),
    stage: Optional[str] = typer.Option(None, "--stage", help="staging or production."),
    version: Optional[str] = typer.Option(None, "--version", help="Version number."),
    trusted_key: Optional[Path] = typer.Option(None, "--trusted-key", help="PEM public key: refuse a package whose "
                                               "manifest is not signed by it."),
    model_name: Optional[str] = _MODEL_NAME_OPT,
    params: Path = _PARAMS_OPT,
) -> None:
    """Copy a version's release package to DIR, verifying every sha256; nothing is left at DIR on failure."""
    registry, name = _registry(params, model_name)
    info = registry.pull_package(out, name, version=version, stage=stage, trusted_key=trusted_key)
    typer.echo(f"pulled {name} version {info['version']} to {info['out']} (verified"
               + (", signed by the trusted key)" if trusted_key else ")"))


@app.command()
@handles_errors
def score(
    input_path: Path = typer.Argument(..., metavar="INPUT.jsonl", help="Sessions to score (annotation format; ratings optional)."),
    model: Path = typer.Option(..., "--model", help="Release package directory (verified against its manifest)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output JSONL (default: stdout); written atomically, "
                                       "resumable after a kill."),
    rationales: bool = typer.Option(False, "--rationales", help="Also generate a rationale per item (greedy, bounded)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (cuda fails unless ONNX Runtime really uses CUDA)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Item prompts per batch over a shared transcript cache."),
    session_batch: int = typer.Option(1, "--session-batch", min=1,
                                      help="Sessions whose transcripts run as one batch (raise it on a GPU; 1 is fastest on CPU)."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", min=1, help="Rationale length bound (tokens)."),
    grounded_quotes: Optional[bool] = typer.Option(
        None, "--grounded-quotes/--free-quotes",
        help="Rationales' quotations constrained to verbatim transcript spans (default: as the package was "
             "released, eval.grounded_quotes)."),
    trusted_key: Optional[Path] = typer.Option(None, "--trusted-key", help="PEM public key: refuse a package whose "
                                               "manifest is not signed by it (see SECURITY.md, signed releases)."),
) -> None:
    """Score sessions with a release package on ONNX Runtime (no PyTorch): one JSON line per session.

    With a calibrated package, each item and dimension gets `interval: {level: [lo, hi]}`. With --out, results
    stream to a partial file beside it; a rerun after a kill resumes where it stopped."""
    from care.errors import InvalidData
    from care.release.scoring import ScoreOptions, score_file

    options = ScoreOptions(rationales=rationales, device=device, batch_size=batch_size, session_batch=session_batch,
                           max_new_tokens=max_new_tokens, grounded_quotes=grounded_quotes, trusted_key=trusted_key)
    try:
        summary = score_file(input_path, model, out, options, notify=lambda note: typer.echo(note, err=True))
    except InvalidData as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        fail(f"{input_path}: {len(exc.problems)} problem(s); nothing scored")
    typer.echo(f"scored {summary.n_sessions} session(s)"
               + (f" ({summary.n_resumed} kept from the interrupted run)" if summary.n_resumed else "")
               + f"; greedy unparsed: {summary.unparsed}; truncated transcripts: {summary.truncated}"
               + ("" if summary.calibrated else "; no intervals (the package has no calibration)")
               + (f"; wrote {summary.out}" if summary.out else ""), err=True)


@app.command()
@handles_errors
def report(
    scores: Path = typer.Argument(..., metavar="SCORES.jsonl", help="Output of `care score` (with --rationales for quotes)."),
    sessions: Path = typer.Option(..., "--sessions", help="The sessions that were scored (annotation JSONL)."),
    out: Path = typer.Option(..., "--out", help="HTML file to write (atomically, mode 0600)."),
    instrument: Optional[str] = typer.Option(None, "--instrument", help="Instrument YAML or built-in name the scores "
                                             "use (default: data.instrument in the params file)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="Params file giving data.instrument."),
) -> None:
    """Write one self-contained HTML page: sortable overview, then per session its scores, intervals,
    rationales with quotes linked to the transcript, and the transcript. It contains client data."""
    from care.data.instrument import load_instrument
    from care.errors import InvalidData
    from care.params import load_params
    from care.report import write_report

    try:
        path = write_report(scores, sessions, out, load_instrument(instrument or load_params(params).data.instrument))
    except InvalidData as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        fail(f"{len(exc.problems)} problem(s); no report written")
    typer.echo(f"wrote {path} (contains client data: share it only with people allowed to read these sessions)")


@app.command()
@handles_errors
def train(
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Params file."),
    overrides: Optional[List[str]] = typer.Option(None, "--set", help="Override a param: KEY=VALUE (repeatable)."),
    release: bool = typer.Option(True, "--release/--no-release", help="After the gate: final fit, ONNX release, registration."),
    metrics_dir: Path = typer.Option(Path("metrics"), "--metrics-dir"),
    plots_dir: Path = typer.Option(Path("plots"), "--plots-dir"),
    wait: float = typer.Option(0.0, "--wait", min=0, help="Seconds to wait for another run writing the same metrics, "
                                                          "plots or release; refused at once by default."),
    verbose: bool = typer.Option(False, "--verbose", help="Also show ZenML's and the libraries' INFO logs and advice."),
) -> None:
    """Run the pipeline: validate, cross-validate, gate, then release and register (ZenML)."""
    from care.logs import quiet_third_party

    quiet_third_party(verbose)  # before ZenML and the model libraries are imported
    from care.params import load_params
    from care.run.outputs import Outputs
    from care.run.preflight import preflight

    params = load_params(params_file, overrides or [])
    outputs = Outputs.at(metrics_dir, plots_dir)
    preflight(params, outputs, release)  # params against the data, outputs, keys: before ZenML is even imported
    from zenml_registry.client import check_store

    check_store()  # answers, and a fresh local store is set up by one process at a time (importing steps uses it)
    from pipelines.training import run_training

    result = run_training(params, outputs, release=release, wait_s=wait, checked=True)
    if result.interrupted:
        fail(f"pipeline run {result.run} interrupted: no further step ran; finished folds are cached, "
             "rerun to resume", 130)
    overall = result.cv_warnings
    for w in overall:
        numbers = "" if w.value is None else f" ({w.check} {w.value} vs {w.threshold})"
        typer.echo(f"warning: {w.scope}: {w.message}{numbers}", err=True)
    if len(result.warnings) > len(overall):
        typer.echo(f"warning: {len(result.warnings) - len(overall)} more on single folds, listed under "
                   f"'warnings' in {metrics_dir / 'cv_detail.json'}", err=True)
    gate = result.gate
    if gate is not None:
        for skipped in gate.not_applied:
            typer.echo(f"gate check not applied: {skipped.check} ({skipped.reason})", err=True)
        for weaker in gate.loosened:
            typer.echo(f"gate loosened: {weaker}", err=True)
        if not gate.passed:
            for check in gate.failed:
                typer.echo(f"gate check failed: {check}", err=True)
            fail(f"gate failed ({len(gate.failed)} check(s)); nothing was exported or registered", 3)
        typer.echo(f"gate passed: {sum(c.verdict == 'pass' for c in gate.checks)} check(s)", err=True)
    if result.status != "completed":
        fail(f"pipeline run {result.run} {result.status}: failed step(s) {', '.join(result.failed_steps) or '?'}"
             f" ({result.error}); see the ZenML logs of the run")
    if result.replaced:
        typer.echo(f"release.out held a changed earlier release: moved to {result.replaced}", err=True)
    reg = result.registration
    if reg is not None:
        typer.echo(f"registered {reg.model} version {reg.version}" + (f" in {reg.stage}" if reg.stage else ""))
    typer.echo(f"run {result.run} completed; metrics in {metrics_dir}/")


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
