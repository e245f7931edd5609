"""The `care` command line (typer): thin commands over care/, pipelines/ and zenml_registry/."""
