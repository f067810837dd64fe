"""glidre-jax: GLiDRE document-level relation extraction in JAX / Flax NNX."""
__version__ = "0.1.0"


def __getattr__(name: str):
  # Lazy: `import glidre_jax` stays light (no JAX import) until the API is used.
  if name in ("GLiDRE", "GLiDREPredictor"):
    from glidre_jax.api import GLiDREPredictor
    return GLiDREPredictor
  raise AttributeError(f"module 'glidre_jax' has no attribute {name!r}")
