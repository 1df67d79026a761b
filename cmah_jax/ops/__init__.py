"""Pure JAX ops shared by the model, the evaluator and users' own code."""
from cmah_jax.ops.hashing import (hamming_distance, hamming_topk, pack_codes, sign_ste,
                                  unpack_codes)
from cmah_jax.ops.image import normalize_images, patchify, unpatchify
from cmah_jax.ops.masking import random_mask, take_tokens
from cmah_jax.ops.pointcloud import (chamfer_distance, farthest_point_sample, group_points,
                                     knn, normalize_unit_sphere)

__all__ = [
    "chamfer_distance", "farthest_point_sample", "group_points", "hamming_distance",
    "hamming_topk", "knn", "normalize_images", "normalize_unit_sphere", "pack_codes",
    "patchify", "random_mask", "sign_ste", "take_tokens", "unpack_codes", "unpatchify",
]
