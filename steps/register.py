"""Step: register the release package as this run's model version and move it to staging when the gate passed."""

from typing import Annotated

from zenml import step

from zenml_registry.client import promote_on_pass, register_package


@step(enable_cache=False)
def register_release(params: dict, package_dir: str, gate: dict) -> Annotated[dict, "registration"]:
    """Uses the pipeline's Model(name=registry.model_name) version; returns {model, version, stage} (JSON)."""
    registry = params.get("registry") or {}
    model_name = registry.get("model_name", "care-alliance")
    version = register_package(package_dir, model_name, {"gate": gate})
    stage = promote_on_pass(version, model_name, registry.get("stage_on_pass", "staging"))
    return {"model": model_name, "version": version, "stage": stage}
