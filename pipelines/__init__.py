"""ZenML pipelines wiring the steps (and the registry client operations)."""
