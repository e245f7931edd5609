"""The CARE pipeline: validate -> folds -> per fold (fine-tune, score, metrics) -> aggregate -> gate
[-> final fit -> release package (merge, ONNX export, parity) -> register and promote to staging]."""

from __future__ import annotations

from zenml import Model, pipeline

from steps import (
    aggregate_cv,
    check_gate,
    final_fit,
    build_release,
    finetune_fold,
    fold_metrics,
    plan_folds,
    register_release,
    score_fold,
    validate_data,
)


@pipeline(enable_cache=False)
def care_pipeline(params: dict, outputs: dict, release: bool = True) -> None:
    summary = validate_data(params=params)
    folds = plan_folds(params=params, outputs=outputs, data_summary=summary)
    results, scored = [], []
    for k in range(params["cv"]["folds"]):
        fold = {"substitutions": {"fold": str(k)}}
        model_dir = finetune_fold.with_options(**fold)(params=params, folds=folds, fold=k, id=f"finetune_fold_{k}")
        scores = score_fold.with_options(**fold)(params=params, folds=folds, fold=k, model_dir=model_dir, id=f"score_fold_{k}")
        metrics = fold_metrics.with_options(**fold)(params=params, folds=folds, fold=k, scored=scores, id=f"fold_metrics_{k}")
        results.append(metrics)
        scored.append(scores)
    cv = aggregate_cv(params=params, outputs=outputs, folds=folds, fold_results=results, scored=scored)
    gate = check_gate(params=params, outputs=outputs, cv_metrics=cv)
    if release:
        fit_dir = final_fit(params=params, gate=gate)
        package = build_release(params=params, model_dir=fit_dir, cv_metrics=cv, gate=gate, data_summary=summary)
        register_release(params=params, package_dir=package, gate=gate)


def run_training(params, outputs, release: bool = True) -> dict:
    """Run the pipeline with a ZenML Model (numbered versions) and return what the run produced.

    Returns {"run": name, "status": ..., "gate": gate.json contents or None, "registration": {...} or None}.
    A failed step (including a failed gate) is reported through the status, never swallowed.
    """
    import json
    from pathlib import Path

    from zenml.client import Client
    from zenml.utils import source_utils

    import steps
    from care.run.workspace import Outputs

    # Steps are imported by module path from the project root, however `care` was started.
    source_utils.set_custom_source_root(str(Path(steps.__file__).resolve().parents[1]))

    out = outputs if isinstance(outputs, Outputs) else Outputs(**outputs)
    gate_path = Path(out.metrics) / "gate.json"
    model = Model(name=params.registry.model_name, description="CARE: client-rated working alliance, item by item",
                  tags=["care", params.model.preset, params.train.targets])
    configured = care_pipeline.with_options(model=model, run_name=f"care-{{date}}-{{time}}")
    gate_path.unlink(missing_ok=True)
    error = None
    try:
        configured(params=params.model_dump(mode="json"), outputs={"metrics": str(out.metrics), "plots": str(out.plots)},
                   release=release)
    except Exception as exc:  # the run's status and gate.json say what failed
        error = exc
    try:
        run = Client().get_pipeline("care_pipeline").last_run
    except KeyError:
        if error is not None:
            raise error
        raise
    registration = None
    if "register_release" in run.steps and run.steps["register_release"].status.value == "completed":
        registration = run.steps["register_release"].outputs["registration"][0].load()
    failed = [name for name, s in run.steps.items() if s.status.value == "failed"]
    return {
        "run": run.name,
        "status": run.status.value,
        "failed_steps": failed,
        "gate": json.loads(gate_path.read_text("utf-8")) if gate_path.exists() and "check_gate" in run.steps else None,
        "registration": registration,
        "error": type(error).__name__ if error else None,
    }
