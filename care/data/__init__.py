"""Annotation data: the format (schema), instruments, reading, validation, intake, folds, importers, synthetic corpus."""
