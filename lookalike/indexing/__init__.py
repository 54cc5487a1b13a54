"""Files into the gallery: ``sources`` (a folder tree, a list, a bucket), ``stages`` (read +
prepare, embed, write: the core that the in-process runner and the Ray Data job share),
``writer`` (the one write path: the store, then Milvus), ``indexer`` (the run report, and the
in-process runner).

May import: the base modules, lookalike.embedding, lookalike.storage, lookalike.milvus and itself.
"""
