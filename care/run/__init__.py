"""One run, step by step: validated data, fits, fold evaluation, the report, the release build and the output files."""
