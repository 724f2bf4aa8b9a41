"""msjax: multiscale gradient estimation (MGE) for image-reconstruction CNNs in JAX/Flax."""

__version__ = "0.1.0"
