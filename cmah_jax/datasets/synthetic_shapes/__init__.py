"""`synthetic_shapes`: procedural paired dataset of parametric 3D shapes, area-uniform point
clouds and CPU renders [ours].

An object is built from parametric parts (`primitives`: boxes, surfaces of revolution,
tubes, tori, prisms) with per-category structure and per-object variation (`categories`,
`furniture`, `objects`: proportions, optional parts, counts, bends, a smooth random warp),
rendered by a NumPy z-buffer (`render`), and is a pure function of `(seed, split, index)`
(`generate`). `builder` is the TFDS builder.
"""
