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
        package = build_release(params=params, outputs=outputs, model_dir=fit_dir, cv_metrics=cv, gate=gate, data_summary=summary)
        register_release(params=params, package_dir=package, gate=gate)
