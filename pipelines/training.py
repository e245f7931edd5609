"""The CARE pipeline: validate -> folds -> base -> per fold (fine-tune, score, metrics) -> aggregate -> gate
[-> final fit -> release package (merge, ONNX export, parity) -> register].

Params are parsed once (`care.params.load_params`); each step receives the typed sections it uses. Steps
hand each other typed JSON documents (`care.run.documents`), the validated data's reference (`DataRef`) and
model directories through the artifact store, never a local path: each step could run on its own machine.
`run_training` then writes the files a person reads (metrics, plots, `release/`) from the run's own artifacts,
installs the release and only then stages the registered version (undone together when either fails).
"""

from __future__ import annotations

import contextlib
import signal

from zenml import Model, pipeline
from zenml.enums import ExecutionMode

from care.params import Params
from care.run.documents import Registration, RunResult
from steps import (
    aggregate_cv,
    build_release,
    check_gate,
    final_fit,
    finetune_fold,
    fold_metrics,
    plan_folds,
    prepare_base,
    register_release,
    score_fold,
    validate_data,
)


@pipeline(enable_cache=False, execution_mode=ExecutionMode.FAIL_FAST)
def care_pipeline(params: Params, release: bool = True) -> None:
    data = validate_data(data=params.data)
    folds = plan_folds(data=data, cv=params.cv)
    fit = params.fit
    base = prepare_base(data=data, fit=fit)
    results, scored = [], []
    for k in range(params.cv.folds):
        fold = {"substitutions": {"fold": str(k)}}
        model = finetune_fold.with_options(**fold)(data=data, folds=folds, fold=k, fit=fit, base=base,
                                                   id=f"finetune_fold_{k}")
        scores = score_fold.with_options(**fold)(data=data, folds=folds, fold=k, fit=fit, eval=params.eval,
                                                 cv=params.cv, model=model, base=base, id=f"score_fold_{k}")
        metrics = fold_metrics.with_options(**fold)(data=data, folds=folds, fold=k, eval=params.eval, scored=scores,
                                                    id=f"fold_metrics_{k}")
        results.append(metrics)
        scored.append(scores)
    detail, _ = aggregate_cv(data=data, folds=folds, fold_results=results, scored=scored, eval=params.eval,
                             cv=params.cv, train=params.train)
    gate = check_gate(cv_detail=detail, gate=params.gate)
    if release:
        final = final_fit(data=data, fit=fit, base=base, gate=gate)
        package = build_release(params=params, data=data, model=final, base=base, cv_detail=detail, gate=gate)
        # Only this step carries the Model: a version exists only for a registered release (ZenML numbers it).
        version = Model(name=params.registry.model_name, description="CARE: client-rated scores, item by item",
                        tags=["care", params.model.preset, params.train.targets])
        register_release.with_options(model=version)(package=package, gate=gate, registry=params.registry)


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM (like Ctrl-C) interrupts the running step; the pipeline then runs no further step (FAIL_FAST)."""
    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _output(run, step: str, name: str):
    """The loaded output `name` of `step` in `run`, or None when the step did not complete."""
    if step not in run.steps or run.steps[step].status.value != "completed":
        return None
    return run.steps[step].outputs[name][0].load()


def run_training(params: Params, outputs, release: bool = True, wait_s: float = 0.0,
                 checked: bool = False) -> RunResult:
    """Run the pipeline with a ZenML Model (numbered versions), then write its files from the artifacts.

    Before any work: the preflight (`care.run.preflight`: params against the data, output paths, keys) and the
    ZenML store (`zenml_registry.client.check_store`); `checked`: the caller ran both already. One run at a time
    writes a set of outputs (`care.run.outputs.outputs_lock`: a second is refused naming the first, or waits up
    to `wait_s` s); the data is held shared against intake. Everything read back is this run's own (its unique
    run name), never the pipeline's newest run.

    Returns the run's `care.run.documents.RunResult` (status, gate, registration, warnings, ...). A failed step
    (the final fit refuses a failed gate) is reported through the status, never swallowed.
    """
    from care.data.lock import RUN_WAIT_S, data_lock
    from care.run import outputs as files
    from care.run.preflight import preflight
    from zenml_registry.client import check_store

    if not checked:
        preflight(params, outputs, release)
        check_store()
    with files.outputs_lock(outputs, params.release.out if release else None, "care train", wait_s):
        if wait_s > 0:  # again only when another run may have written them while this one waited for the lock
            files.check_outputs(outputs)
            if release:
                files.check_release_out(params.release.out)
        # intake (`care annotations add`) waits or is refused until the run is over: folds see one version of the data
        with data_lock(params.data.path, "care train", exclusive=False, wait_s=RUN_WAIT_S):
            return _run_locked(params, outputs, release, files)


def _run_locked(params: Params, outputs, release: bool, files) -> RunResult:
    import uuid
    from datetime import datetime
    from pathlib import Path

    from zenml.client import Client

    for stale in ("gate.json", "cv.json", "cv_detail.json"):
        (Path(outputs.metrics) / stale).unlink(missing_ok=True)
    name = f"care-{datetime.now():%Y_%m_%d-%H_%M_%S}-{uuid.uuid4().hex[:8]}"  # this run's own, looked up by it
    error = None
    try:
        with stop_on_signals():
            care_pipeline.with_options(run_name=name)(params=params, release=release)
    except (Exception, KeyboardInterrupt) as exc:  # the run's status and gate document say what failed
        error = exc
    try:
        run = Client().get_pipeline_run(name, allow_name_prefix_match=False)
    except KeyError:
        if error is not None:
            raise error
        raise
    folds = _output(run, "plan_folds", "folds")
    if folds is not None:
        files.write_folds(outputs, folds)
    detail = _output(run, "aggregate_cv", "cv_detail")
    gate = _output(run, "check_gate", "gate")
    if detail is not None:
        files.write_cv(outputs, detail, _output(run, "aggregate_cv", "predictions"))
        if gate is not None:
            files.write_gate(outputs, detail, gate)
    registration = _output(run, "register_release", "registration")
    replaced = None
    if registration is not None:
        package = _output(run, "build_release", "release_package")
        registration, replaced = _install_and_stage(package.path, registration, params, files)
    return RunResult(
        run=run.name,
        status=run.status.value,
        failed_steps=[name for name, s in run.steps.items() if s.status.value == "failed"],
        gate=gate,
        registration=registration,
        error=type(error).__name__ if error else None,
        interrupted=isinstance(error, KeyboardInterrupt),
        warnings=detail.warnings if detail is not None else [],
        replaced=replaced,
    )


def _install_and_stage(package: str, registration: Registration, params: Params,
                       files) -> tuple[Registration, str | None]:
    """Install the release, then stage the version (registry.stage_on_pass) while the install can still be undone.

    A version is kept in the registry only with its release installed: when the install or the staging fails,
    the previous release is put back and the version, registered by the pipeline but never staged, is deleted.
    """
    from care.errors import CareError
    from zenml_registry.client import promote_on_pass, retract_version

    model, version = registration.model, registration.version
    try:
        with files.installing_release(package, params.release.out) as installed:
            stage = promote_on_pass(version, model, params.registry.stage_on_pass)
    except BaseException as exc:
        try:
            retracted = retract_version(version, model)
        except Exception:  # noqa: BLE001 - the registry itself failed; say so instead of hiding the first error
            retracted = False
        note = (f"version {version} of {model} was removed from the registry" if retracted else
                f"version {version} of {model} stays registered without its release: check `care models list`")
        if isinstance(exc, CareError):
            err = CareError(f"{exc}; {note}")
            err.exit_code = exc.exit_code
            raise err from None
        raise
    return registration.model_copy(update={"stage": stage}), installed.replaced
