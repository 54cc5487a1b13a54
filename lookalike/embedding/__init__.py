"""The model and its input: image bytes (or words) -> unit vectors, one way for ingest and query.

``images`` (decode, validate, orient, fit: the one preprocessing), ``models`` (the registry of
networks), ``descriptors`` (pooling, and the name a collection records), ``regions`` (the parts
of an image kept as vectors of their own), ``encoder`` (batches -> vectors) over
``torch_runtime`` or ``onnx_runtime`` (an export found by ``cache_keys`` loads without torch);
``clip_folder`` (a CLIP export in immich's layout) and ``text`` (its text tower: words ->
vectors in the images' space).

May import: the base modules and itself.
"""
