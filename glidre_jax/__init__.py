"""glidre-jax: GLiDRE document-level relation extraction in JAX / Flax NNX."""
__version__ = "0.1.0"
