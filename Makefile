# One command for the main job (`make demo`), one for the tests (`make test`).
# Both create .venv with everything they need on a machine that has only Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= cdm_imagenet32_base
SEED ?= 0

.PHONY: demo architecture train-mnist evaluate-mnist test test-large install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Main job: sample the trained cdm_mnist32 cascade (8 -> 16 -> 32) into a labelled
# 10x10 grid, one row per digit.
demo: $(STAMP)
	$(VENV)/bin/keras-cdm sample --preset cdm_mnist32 --per-class 10 --seed $(SEED) --batch-size 100 --out mnist_grid.png

# Build a paper architecture (random weights) and print its summary and parameter count.
architecture: $(STAMP)
	$(VENV)/bin/keras-cdm architecture $(PRESET)

# The whole suite under TensorFlow and, at the same time (much of a test's time is
# single-threaded tracing, so two lanes share 2 cores well), the backend-dependent tests
# under JAX, plus the guides (each runs in its own process, in fast mode), then the
# backend-dependent tests under PyTorch (eager: about 7 minutes); the random SIGKILLs of
# tests/backup_resume_test.py are drawn in the TensorFlow pass only (the other passes keep its
# kills at fixed points). The JAX pass shares XLA's compilations between its processes (the
# killed and resumed training workers, the guides) through a persistent compilation cache in
# the run's temporary folder: a worker starts in half the time. Each pass logs to its own
# file, printed when all are done. The target fails if any pass fails; pytest exits non-zero
# when it collects nothing, so an empty run fails CI.
test: $(STAMP)
	@tmp=$$(mktemp -d); \
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q --durations=40 --basetemp=$$tmp/tf -m "not guides" > .test-tensorflow.log 2>&1 & tf=$$!; \
	JAX_COMPILATION_CACHE_DIR=$$tmp/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
	    CDM_BACKUP_KILL_TRIALS=0 KERAS_BACKEND=jax $(PY) -m pytest -q --durations=40 -p no:cacheprovider --basetemp=$$tmp/jax \
	    -m "(not backend_neutral and not tensorflow_only) or guides" > .test-jax.log 2>&1; jax=$$?; \
	CDM_BACKUP_KILL_TRIALS=0 KERAS_BACKEND=torch $(PY) -m pytest -q --durations=40 -p no:cacheprovider --basetemp=$$tmp/torch \
	    -m "not backend_neutral and not tensorflow_only and not guides" > .test-torch.log 2>&1; torch=$$?; \
	wait $$tf; tf=$$?; \
	echo "== KERAS_BACKEND=tensorflow pytest -q -m 'not guides' (exit $$tf)"; cat .test-tensorflow.log; \
	echo "== KERAS_BACKEND=jax pytest -q -m '(not backend_neutral and not tensorflow_only) or guides' (exit $$jax)"; \
	cat .test-jax.log; \
	echo "== KERAS_BACKEND=torch pytest -q -m 'not backend_neutral and not tensorflow_only and not guides' (exit $$torch)"; \
	cat .test-torch.log; \
	test $$tf -eq 0 && test $$jax -eq 0 && test $$torch -eq 0

# Retrain cdm_mnist32 from scratch (seeded; rerun to resume) into presets/cdm_mnist32, then
# measure it (tables, plots and pictures into docs/cdm_mnist32/). See docs/cdm_mnist32.md.
train-mnist: $(STAMP)
	$(PY) scripts/train_cdm_mnist32.py
	$(PY) scripts/train_cdm_mnist32.py --stages sr32 --no-blur --workdir runs/cdm_mnist32_noblur --no-assemble

evaluate-mnist: $(STAMP)
	$(PY) scripts/evaluate_cdm_mnist32.py

test-large: $(STAMP)
	KERAS_BACKEND=tensorflow $(PY) -m pytest -q --large -m large

clean:
	rm -rf $(VENV) build dist .pytest_cache
