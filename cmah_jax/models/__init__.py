"""CMAH models (Flax Linen): `build(variant, bits, key) -> (model, variables)`, the `CMAH`
module, and pure encoding helpers usable from any JAX code::

    import functools, jax
    from cmah_jax.models import build, encode_images, encode_points
    model, variables = build("small", 64, jax.random.key(0))
    codes = jax.jit(functools.partial(encode_images, model))(variables, images)  # [B, 64] +-1
"""
from cmah_jax.models.cmah import (CMAH, abstract_variables, build, encode_images,
                                  encode_points, hash_features, init_variables)
from cmah_jax.models.variants import VARIANTS, ModelConfig, resolve_config

__all__ = [
    "CMAH", "ModelConfig", "VARIANTS", "abstract_variables", "build", "encode_images",
    "encode_points", "hash_features", "init_variables", "resolve_config",
]
