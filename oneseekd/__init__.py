"""oneseekd: a training daemon for LoRA fine-tuning of local base models."""

__version__ = "0.1.0"
