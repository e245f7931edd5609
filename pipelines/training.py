"""The CARE pipeline: validate -> folds -> base -> per fold (fine-tune, score, metrics) -> aggregate -> gate
[-> final fit -> release package (merge, ONNX export, parity) -> register and stage].

Params are parsed once (`care.params.load_params`); each step receives the typed sections it uses. Steps
hand each other JSON, the validated data's reference (`DataRef`) and model directories through the
artifact store, never a local path: each step could run on its own machine. `run_training` then writes
the files a person reads (metrics, plots, `release/`) from the run's artifacts.
"""

from __future__ import annotations

import contextlib
import signal

from zenml import Model, pipeline
from zenml.enums import ExecutionMode

from care.params import Params
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


def run_training(params: Params, outputs, release: bool = True) -> dict:
    """Run the pipeline with a ZenML Model (numbered versions), then write its files from the artifacts.

    Returns {"run", "status", "failed_steps", "gate" (gate.json contents or None), "registration", "error",
    "interrupted" (Ctrl-C or SIGTERM), "warnings" (care.evaluation.diagnostics)}. A failed step (the final fit
    refuses a failed gate) is reported through the status, never swallowed.
    """
    from care.data.lock import RUN_WAIT_S, data_lock
    from care.run import outputs as files

    files.check_outputs(outputs)
    if release:
        files.check_release_out(params.release.out)
    # intake (`care annotations add`) waits or is refused until the run is over: folds see one version of the data
    with data_lock(params.data.path, "care train", exclusive=False, wait_s=RUN_WAIT_S):
        return _run_locked(params, outputs, release, files)


def _run_locked(params: Params, outputs, release: bool, files) -> dict:
    from pathlib import Path

    from zenml.client import Client

    for stale in ("gate.json", "cv.json", "cv_detail.json"):
        (Path(outputs.metrics) / stale).unlink(missing_ok=True)
    configured = care_pipeline.with_options(run_name="care-{date}-{time}")
    error = None
    try:
        with stop_on_signals():
            configured(params=params, release=release)
    except (Exception, KeyboardInterrupt) as exc:  # the run's status and gate document say what failed
        error = exc
    try:
        run = Client().get_pipeline("care_pipeline").last_run
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
    if registration is not None:
        package = _output(run, "build_release", "release_package")
        files.install_release(package.path, params.release.out)
    return {
        "run": run.name,
        "status": run.status.value,
        "failed_steps": [name for name, s in run.steps.items() if s.status.value == "failed"],
        "gate": gate,
        "registration": registration,
        "error": type(error).__name__ if error else None,
        "interrupted": isinstance(error, KeyboardInterrupt),
        "warnings": (detail or {}).get("warnings", []),
    }
