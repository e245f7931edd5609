"""ZenML pipelines wiring the steps."""
