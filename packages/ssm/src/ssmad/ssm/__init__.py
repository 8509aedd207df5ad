"""ssmad ssm."""

__version__ = "0.1.0"
