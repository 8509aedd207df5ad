"""ssmad applications: ``python -m apps.almrr`` and ``python -m apps.vmpfd``."""
