"""cmah_jax: self-supervised cross-modal hashing between images and point clouds (CMAH)."""

__version__ = "0.1.0"
