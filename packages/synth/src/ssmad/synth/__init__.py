"""ssmad synth."""

__version__ = "0.1.0"
