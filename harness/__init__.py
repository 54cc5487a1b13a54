"""What the tests and the benchmarks share, and neither owns: real servers bound to 127.0.0.1
(``servers``), a local Ray cluster with Serve and the application deployed as `make run` does
(``serve``), one bounded load generator that only ever sends to loopback (``load``; the mixed
search, add and delete load in ``mixed_load``, a replica killed under load in ``load``), and this
machine's processes by psutil (``processes``); the suite's shared pytest fixtures (``fixtures``,
loaded by the repo's conftest.py) and the images they generate (``images``). Tests and benchmarks
import this package; it imports neither of them.
"""
