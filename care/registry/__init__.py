"""Registry rules without ZenML: what a version records and when it may be promoted (zenml_registry/ talks to ZenML)."""
