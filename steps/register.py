"""Step: register the release package as this run's model version and stage it when the gate passed."""

from typing import Annotated

from zenml import step

from care.params import RegistryParams
from care.run.artifacts import ModelDir
from zenml_registry.client import promote_on_pass, register_package


@step(enable_cache=False)
def register_release(package: ModelDir, gate: dict, registry: RegistryParams) -> Annotated[dict, "registration"]:
    """Uses the pipeline's Model(name=registry.model_name) version; returns {model, version, stage} (JSON)."""
    version = register_package(package.path, registry.model_name, {"gate": gate})
    stage = promote_on_pass(version, registry.model_name, registry.stage_on_pass)
    return {"model": registry.model_name, "version": version, "stage": stage}
