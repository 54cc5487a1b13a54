"""Lookalike's Ray-free core, in layers; each package's docstring says what it may import
(``tests/test_layout.py`` holds every module to it):

- the base modules: ``settings`` (the one typed settings object), ``errors`` (domain errors and
  their HTTP statuses), ``limits`` (an entry's field bounds), ``retry`` (backoff), ``machine``
  (this machine's load) and ``ray_env`` (the environment of the Ray clusters we start). They
  import only each other.
- ``embedding``: the model and its input (image bytes -> unit vectors).
- ``storage``: the image store and fetching by URL.
- ``milvus``: the catalog and the local Milvus engines.
- ``indexing``: files into the gallery (sources, stages, the one write path).
- ``quality``: evaluation, near-duplicates, the sample gallery.
- ``query``: the one query path (prepare, encode, search, filter, URLs), over any of the above.
- ``cli``: the ``lookalike`` command, over all of them.

May import: the base modules.
"""
