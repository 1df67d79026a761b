"""The runtime input pipeline: order, transforms, prefetch and device placement.

    from cmah_jax.input import InputSpec, TrainPipeline, eval_batches
    spec = cmah_jax.config.resolve(config).input
    for batch in TrainPipeline(builder, "train", spec, mesh, seed=0): ...

Modules: `spec` (InputSpec), `order` (which records form the batch of a step, which rows a
host reads), `transforms` (per-example augmentation / eval view), `batches` (host-local
NumPy batches), `prefetch` (background thread), `pipeline` (global arrays on the mesh).
"""
from cmah_jax.input.batches import (ConcatSource, SubsetSource, as_source, eval_local_batch,
                                    eval_subset_index, num_eval_batches, num_examples,
                                    train_local_batch)
from cmah_jax.input.order import (epoch_permutation, global_batch_indices, host_rows,
                                  steps_per_epoch)
from cmah_jax.input.pipeline import TrainPipeline, eval_batches, local_rows
from cmah_jax.input.prefetch import BatchIterator
from cmah_jax.input.spec import InputSpec
from cmah_jax.input.transforms import (EVAL_SUBSET_SEED, augment_example, color_jitter,
                                       eval_example, resize_images)

__all__ = [
    "BatchIterator", "ConcatSource", "EVAL_SUBSET_SEED", "InputSpec", "SubsetSource",
    "TrainPipeline", "as_source", "augment_example", "color_jitter", "epoch_permutation",
    "eval_batches", "eval_example", "eval_local_batch", "eval_subset_index",
    "global_batch_indices", "host_rows", "local_rows", "num_eval_batches", "num_examples",
    "resize_images", "steps_per_epoch", "train_local_batch",
]
