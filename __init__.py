"""ytune: Y-Tuning on cached features of a frozen encoder."""

__version__ = "0.1.0"
