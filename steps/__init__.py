"""Thin ZenML steps, one per file, re-exported here."""

from steps.register import register_release
