"""ALMRR: Mamba feature reconstruction and refinement for anomaly localisation on textured surfaces."""
