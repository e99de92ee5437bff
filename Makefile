# The README's commands. Every target that runs code depends on `setup`, which
# builds .venv once (stamp file) and installs the tested set (requirements.lock), torch first.
SHELL := /bin/bash
PY := .venv/bin/python
TORCH := 2.13.0  # the torch the lock is resolved against; keep equal to the pin in $(STAMP)
STAMP := .venv/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export WANDB_MODE ?= offline

.PHONY: setup demo test test-slow bench lock clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: a cached CPU wheel; an unpinned torch pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: setup
	bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q -x --durations=15

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	.venv/bin/dp-bench

# regenerate requirements.lock from pyproject.toml (needs uv: pip install uv)
lock:
	TORCH=$(TORCH) bash scripts/lock.sh

clean:
	rm -rf .venv
