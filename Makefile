# make: on every Linux/macOS dev machine with no bootstrap, and its file targets give "install only when missing or changed".
#
#   make study                 # create .venv if needed, then a local smoke study
#   make test                  # create .venv if needed, then the tests
#   make test ARGS="-m unit"   # extra args go to pytest (or to tune/run.py for `make study`)
#
# The venv is (re)installed when it is missing or pyproject.toml / cluster/requirements.lock
# changed since the last install; otherwise both commands start at once.

PYTHON ?= python3
VENV ?= .venv
ARGS ?=
# torch first, on its own: a bare torch requirement with no torch present pulls a multi-GB
# CUDA build. TORCH_INDEX names a package index for this one step, e.g. PyTorch's CPU-only
# index on a Linux machine whose PyPI torch would be the CUDA build.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: study test venv clean-venv

# Each run is a new study, smoke-<date-time> (run.py never overwrites one); a --name in ARGS wins.
study: $(STAMP)
	$(BIN)/python tune/run.py --smoke --name smoke-$$(date +%Y%m%d-%H%M%S) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml cluster/requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "$(PYTHON) is older than 3.10; run with PYTHON=python3.11 (or another 3.10+)" >&2; exit 1; }
	@echo "Installing into $(VENV): torch, then the project with cluster/requirements.lock (a few minutes the first time)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH)
	$(BIN)/python -m pip install -q -c cluster/requirements.lock -e '.[dev]'
	touch $@

clean-venv:
	rm -rf $(VENV)
