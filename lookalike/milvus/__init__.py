"""Milvus: the gallery's catalog and the local engines that hold it.

``catalog`` (schema, versioned collections behind an alias, rows, search), ``engines`` (which
Milvus a process talks to, and ``open_catalog`` / ``gallery_catalog``: how every process reaches
it), ``lite_server`` and ``server`` (the embedded Milvus Lite's server, the local Milvus server),
``supervisor`` (the one owner of the local processes), ``migrate`` (``lookalike migrate``).

May import: the base modules, lookalike.embedding (an image's id, boxes, descriptors) and itself.
"""
