"""Cross-modal retrieval over an on-disk index of binary codes.

Python API (the command line is `python -m cmah_jax.index`)::

    from cmah_jax import retrieval
    from cmah_jax.inference import load_trained           # or retrieval.bind(model, params)
    trained = load_trained("work/default")
    retrieval.build_index("work/shapes.idx", trained, points="my_meshes/", workdir="work/default")
    retrieval.add_to_index("work/shapes.idx", trained, points="more_meshes/")
    index = retrieval.HashIndex.open("work/shapes.idx")
    results = retrieval.search_files(index, trained, ["photo.jpg"], k=10)
    dist, rows = retrieval.search_codes(index, packed_queries, k=10)   # codes in, no model
    retrieval.export_faiss(index, "work/shapes.faiss")

Modules: `readers` (files -> model inputs), `encode` (batched sharded encoding, faiss bit
order), `index` (the format, a model's fingerprint, atomic commits), `build` (build / add),
`search` (exact chunked top-k), `faiss_export`, `picture`.
"""
from cmah_jax.retrieval.build import BuildSummary, add_to_index, build_index
from cmah_jax.retrieval.encode import BoundModel, Encoder, bind, pack_faiss, unpack_faiss
from cmah_jax.retrieval.faiss_export import export_faiss, to_faiss
from cmah_jax.retrieval.index import BadIndex, FingerprintMismatch, HashIndex, fingerprint_of
from cmah_jax.retrieval.readers import BadInput, load_image, load_points, read_geometry
from cmah_jax.retrieval.search import (format_results, merge_topk, search_codes,
                                       search_files)

__all__ = [
    "BadIndex", "BadInput", "BoundModel", "BuildSummary", "Encoder", "FingerprintMismatch",
    "HashIndex", "add_to_index", "bind", "build_index", "export_faiss", "fingerprint_of",
    "format_results", "load_image", "load_points", "merge_topk", "pack_faiss",
    "read_geometry", "search_codes", "search_files", "to_faiss", "unpack_faiss",
]
