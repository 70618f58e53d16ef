# One command for the main job (`make demo`), one for the tests (`make test`).
# Both create .venv with everything they need on a machine that has only Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= cdm_imagenet32_base

.PHONY: demo test test-large install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Main job: build a paper architecture and print its summary and parameter count.
demo: $(STAMP)
	$(VENV)/bin/keras-cdm architecture $(PRESET)

# The whole suite under TensorFlow, then the backend-agnostic tests under JAX.
# pytest exits non-zero when it collects nothing, so an empty run fails CI.
test: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q
	KERAS_BACKEND=jax $(PY) -m pytest -q -m "not backend_neutral and not tensorflow_only"

test-large: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q --large -m large

clean:
	rm -rf $(VENV) build dist .pytest_cache
