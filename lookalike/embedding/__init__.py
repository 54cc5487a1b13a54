"""The model and its input: image bytes -> unit vectors, one way for ingest and query.

``images`` (decode, validate, orient, fit: the one preprocessing), ``models`` (the registry of
networks), ``descriptors`` (pooling, and the name a collection records), ``regions`` (the parts
of an image kept as vectors of their own), ``encoder`` (batches -> vectors) over
``torch_runtime`` or ``onnx_runtime``.

May import: the base modules and itself.
"""
