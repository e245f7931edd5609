"""What a run prints: the run, each fold's progress bar, the gate, the release, warnings and errors.

Third-party chatter is held back here, once, at its loggers (call `quiet_third_party` before ZenML or the
model libraries are imported): ZenML's step banners and hints (its verbosity, `ZENML_LOGGING_VERBOSITY`),
Great Expectations' start-up lines ("Skipping registering function ... because it is a closure", about 200 a
run), ONNX Runtime's optimiser notes, transformers' and peft's advice. Their errors still show, and so do
care's own warnings (printed by the CLI). `verbose` (`care train --verbose`) shows everything again.
"""

from __future__ import annotations

import logging
import os
import warnings

# logger -> the least level a quiet run shows. Each also gets a filter, so a library that sets its own
# logger's level when imported (Great Expectations does, to INFO) stays quiet.
QUIET_LEVELS = {
    "great_expectations": logging.WARNING,
    "great_expectations.data_context.types.base": logging.WARNING,
    "onnxruntime.transformers": logging.ERROR,
    # ONNX Runtime's optimiser imports its fusions as top-level modules: "symbolic shape inference disabled or
    # failed" on every export comes from these
    "fusion_skiplayernorm": logging.ERROR,
    "fusion_skip_group_norm": logging.ERROR,
    "transformers": logging.ERROR,
    "peft": logging.ERROR,
}
_LIBRARY_WARNINGS = r"(transformers|peft)(\.|$)"  # modules whose Python warnings are advice, not a problem of the run


class _AtLeast(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def quiet_third_party(verbose: bool = False) -> None:
    """Hold third-party INFO chatter and library advice back (see the module docstring); `verbose`: show it.
    A ZENML_LOGGING_VERBOSITY or TRANSFORMERS_VERBOSITY already set is kept."""
    if verbose:
        os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "INFO")
        return
    os.environ.setdefault("ZENML_LOGGING_VERBOSITY", "WARN")  # read when ZenML is imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name, level in QUIET_LEVELS.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(f, _AtLeast) for f in logger.filters):
            logger.addFilter(_AtLeast(level))
    warnings.filterwarnings("ignore", module=_LIBRARY_WARNINGS)
