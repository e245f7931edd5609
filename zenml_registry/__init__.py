"""The model registry on ZenML's Model Control Plane (register, promote, list, show, pull)."""
