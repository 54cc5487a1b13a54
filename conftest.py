"""pytest's root: the suite's shared fixtures (real servers, the Ray cluster, the Serve apps) are
a plugin of the harness, so that the tests (tests/) and the benchmarks' smoke runs
(benchmarks/test_smoke.py) share one of each per session."""

pytest_plugins = ["harness.fixtures"]
