"""Cross-modal hashing baselines.

Exported here: the shallow ones, NumPy only, run on the host: hand-crafted features, CCA,
ITQ, CCA-ITQ [Gong & Lazebnik 2013] and random codes. Modules that need JAX are imported
by their own name, so importing this package stays light.
"""
from cmah_jax.baselines.cca import Cca, fit_cca
from cmah_jax.baselines.cca_itq import CcaItq
from cmah_jax.baselines.chance import random_codes
from cmah_jax.baselines.features import (hog_features, image_features, point_features,
                                         thumbnail_features)
from cmah_jax.baselines.itq import fit_itq, quantization_loss, random_rotation

__all__ = ["Cca", "CcaItq", "fit_cca", "fit_itq", "hog_features", "image_features",
           "point_features", "quantization_loss", "random_codes", "random_rotation",
           "thumbnail_features"]
