"""Importers: public corpora mapped onto the annotation format (``care import ...``)."""
