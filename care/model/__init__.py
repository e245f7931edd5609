"""Models: presets and the tiny base, prompts, session packing, the loss and fine-tuning."""
