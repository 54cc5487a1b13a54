"""How good the answers are, and what the library holds twice: ``evaluation`` (``lookalike eval``:
retrieval metrics, edited copies, parts of images), ``duplicates`` (near-duplicate groups from
batched neighbour scans), ``gallery`` (the quick start's sample gallery of labelled images).

May import: the base modules, lookalike.embedding, lookalike.milvus and itself.
"""
