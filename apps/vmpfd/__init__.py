"""VMPFD-AD: Vision-Mamba autoencoder + patch feature distribution with a mixture density network."""
