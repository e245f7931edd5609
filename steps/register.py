"""Step: register the release package as this run's model version. The driver stages it once its release is
installed (`pipelines.training.run_training`), so a staged version always has its release where the run said."""

from typing import Annotated

from zenml import step

from care.params import RegistryParams
from care.run.artifacts import ModelDir
from care.run.documents import Gate, Registration
from zenml_registry.client import register_package


@step(enable_cache=False)
def register_release(package: ModelDir, gate: Gate,
                     registry: RegistryParams) -> Annotated[Registration, "registration"]:
    """Uses the pipeline's Model(name=registry.model_name) version; the driver stages it later."""
    version = register_package(package.path, registry.model_name, {"gate": gate.as_json()})
    return Registration(model=registry.model_name, version=version, stage=None)
