"""Evaluation: reading scores from logits, PyTorch scoring, metrics, baselines, rationale quality, gate, plots."""
