# Lookalike — the two commands of the README, and their parts.
#   make run     venv + packages, sample gallery, ingest it (Ray Data), serve on http://127.0.0.1:8000
#   make test    the whole test suite (in a loopback-only network namespace where possible)

PYTHON    ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
# The torch/torchvision pair to install (x86_64 + Python 3.11 here: a CUDA build that also
# runs on the CPU). Override for other machines, e.g. TORCH_PKGS="torch torchvision".
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
# The folder to index for `make run` (<label>/<image> layout). The default is a sample
# built from Debian's openclipart-png.
GALLERY   ?= data/gallery
OPENCLIPART := /usr/share/openclipart/png
PYTEST_ARGS ?=
# Tests run as in an activated virtualenv (a Ray job's `python` is this environment's).
TEST_PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run index serve gallery test system-deps test-deps bench bench-scale bench-data clean

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# Through uv where it installs: fresh venvs, the same packages, torch + torchvision took 60 s
	@# with pip and 31 s with uv, the rest 67 s and 28 s. Else pip, which also reads pip.conf (a
	@# local wheel, constraints). Bytecode compiled at install, as pip does: where
	@# PYTHONDONTWRITEBYTECODE is set (these machines), every process would otherwise compile its
	@# imports anew (+2 s each: CI 1.2x slower).
	if $(BIN)/pip install -q uv && \
	  $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(TORCH_PKGS) -e '.[test]'; then :; \
	else $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q $(TORCH_PKGS) && \
	  $(BIN)/pip install -q -e '.[test]'; fi
	touch $@

# Debian packages: the sample gallery's images.
system-deps:
	@if [ ! -d $(OPENCLIPART) ] && command -v apt-get >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q openclipart-png >/dev/null; \
	  else sudo apt-get install -y -q openclipart-png >/dev/null; fi; fi

# Debian packages the tests need: Chromium for the web page (never a browser download),
# iproute2 for the loopback-only network namespace, docker-compose to validate the compose file
# offline (no Docker engine).
test-deps:
	@pkgs=""; [ -x /usr/bin/chromium ] || pkgs="chromium chromium-driver"; \
	command -v ip >/dev/null || pkgs="$$pkgs iproute2"; \
	if [ -n "$$pkgs" ] && command -v apt-get >/dev/null; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get install -y -q $$pkgs >/dev/null || \
	  { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q $$pkgs >/dev/null; }; fi
	@# Its recommends would bring a Docker engine: only the client is wanted.
	@command -v docker-compose >/dev/null || { sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get install -y -q --no-install-recommends docker-compose >/dev/null || \
	  { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q --no-install-recommends docker-compose >/dev/null; }; }

gallery: install system-deps
	@if [ "$(GALLERY)" = "data/gallery" ]; then $(BIN)/lookalike gallery --out data/gallery; fi

index: gallery
	$(BIN)/python -m ingest $(GALLERY) --report data/ingest-report.json

serve: install
	$(BIN)/lookalike serve

run: index serve

# In a network namespace with only loopback (unshare), every test is provably local. Falls back
# to the host network where namespaces are not allowed (the local Milvus server's tests, which
# need namespaces of their own, then skip). Each run has a temporary folder of its own: pytest's
# shared default (/tmp/pytest-of-$USER) keeps the last three runs' folders and deleted those of
# a run still going beside others. Kept when a test fails, removed otherwise.
test: install test-deps
	@export LOOKALIKE_TEST_TMP=$$(mktemp -d "$${TMPDIR:-/tmp}/lookalike-test-XXXXXX"); \
	if unshare -rn true 2>/dev/null; then \
	  PATH="$(TEST_PATH)" unshare -rn sh -c 'ip link set lo up && exec $(BIN)/python -m pytest --basetemp="$$LOOKALIKE_TEST_TMP" $(PYTEST_ARGS)'; \
	else \
	  echo "unshare not permitted here: running on the host network"; \
	  PATH="$(TEST_PATH)" $(BIN)/python -m pytest --basetemp="$$LOOKALIKE_TEST_TMP" $(PYTEST_ARGS); \
	fi; status=$$?; \
	if [ $$status -eq 0 ]; then rm -rf "$$LOOKALIKE_TEST_TMP"; else echo "test files kept in $$LOOKALIKE_TEST_TMP"; fi; \
	exit $$status

# The benchmarks (docs/benchmarks.md): each writes JSON, a Markdown table and PNG plots to
# BENCH_OUT. Well over 2 hours on a 2-vCPU machine (each step's last run: quality 21 minutes, HTTP
# load 11, vector search 17 and 24 for its 200k sets and more for 1M vectors, the rest under 4
# each). Vector search rebuilds each index type as the service does, by a copy into the
# next version, and Milvus keeps a dropped version's files for 3 hours: a run here ran out of
# its 72 GB free in the 1M set's first rebuild, with both 200k sets' files still on the same
# server (each set now has a server of its own, removed after it). With less disk, leave 1M
# out: make bench VECTOR_SIZES=200000x1280,200000x2048.
VECTOR_SIZES ?= 200000x1280,200000x2048,1000000x1280
BENCH_OUT ?= docs/benchmarks
bench: install bench-data
	$(BIN)/python -m benchmarks.embedding --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.clip_towers --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.words --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.vector_search --sizes $(VECTOR_SIZES) --out $(BENCH_OUT)
	PATH="$(TEST_PATH)" $(BIN)/python -m benchmarks.http_load --out $(BENCH_OUT)
	PATH="$(TEST_PATH)" $(BIN)/python -m benchmarks.handle_hop --out $(BENCH_OUT)
	PATH="$(TEST_PATH)" $(BIN)/python -m benchmarks.replica_kill --out $(BENCH_OUT)
	PATH="$(TEST_PATH)" $(BIN)/python -m benchmarks.quality --out $(BENCH_OUT)
	PATH="$(TEST_PATH)" $(BIN)/python -m benchmarks.reembed_load --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.summary --results $(BENCH_OUT)

# The original's scale on this machine (~1 hour on 2 vCPUs): 200,000 images ingested into the
# local Milvus server and served (benchmarks/scale.py), then its index rebuilt under search load
# (benchmarks/rebuild_load.py also does that alone, on a gallery already ingested).
SCALE_WORK ?= data/bench/scale
bench-scale: install bench-data
	PATH="$(TEST_PATH)" $(BIN)/python -m benchmarks.scale --work $(SCALE_WORK) --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.duplicate_scan --out $(BENCH_OUT)
	$(BIN)/python -m benchmarks.summary --results $(BENCH_OUT)

# Debian packages with the benchmarks' labelled images: openclipart and Fashion-MNIST.
bench-data:
	@pkgs=""; [ -d $(OPENCLIPART) ] || pkgs="openclipart-png"; \
	[ -d /usr/share/datasets/fashion-mnist ] || pkgs="$$pkgs dataset-fashion-mnist"; \
	if [ -n "$$pkgs" ] && command -v apt-get >/dev/null; then \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get install -y -q $$pkgs >/dev/null || \
	  { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q $$pkgs >/dev/null; }; fi

clean:
	-$(BIN)/lookalike local-milvus stop
	rm -rf data
