"""ssljax: self-supervised learning without negative pairs, in JAX/Flax."""

__version__ = "0.1.0"
