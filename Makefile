# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
PIP := .venv/bin/pip
TEXT ?= a fluffy blue creature roamed the verdant forest

# The transformers version floor (pyproject's `transformers>=X`) gets its own venv, .venv-floor,
# where the Hugging Face tests run too (`make floor-test`, part of `make test`). Built once, then
# reused until pyproject.toml changes.
FLOOR := $(shell sed -n 's/.*"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml)
HF_TESTS := tests/hf tests/inspect/test_capture.py tests/inspect/test_capture_copies.py tests/inspect/test_capture_options.py tests/models/test_load.py

.PHONY: setup demo test bench bench-full clean browser floor floor-test

setup: .venv/.stamp-installed

.venv/.stamp-installed: pyproject.toml
	python3 -m venv .venv
	# The CPU wheel of torch lies on these machines' disk; pin it before anything pulls a CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[all,test]'
	touch $@

floor: .venv-floor/.stamp-installed

.venv-floor/.stamp-installed: pyproject.toml
	rm -rf .venv-floor
	python3 -m venv .venv-floor
	.venv-floor/bin/pip install torch==2.13.0
	.venv-floor/bin/pip install 'transformers==$(FLOOR)' -e '.[hf,test]'
	touch $@

floor-test: floor
	@echo "Hugging Face tests on the transformers floor, $(FLOOR):"
	.venv-floor/bin/python -m pytest -q -ra -m "not slow" $(HF_TESTS)

browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y chromium)

demo: setup
	$(PY) -m attnkit explain "$(TEXT)" --out attnkit-out
	@echo
	@echo "The same sentence in the toy model trained so that nouns must find their adjectives:"
	$(PY) -m attnkit explain "$(TEXT)" --model toy --out attnkit-out/toy

test: setup browser
	$(PY) -m ruff check attnkit tests benchmarks docs
	.venv/bin/lint-imports
	$(PY) -m pytest -q -ra
	$(MAKE) floor-test

# The figures the kernel targets are about (BENCHMARKS.md): causal attention at N = 4,096 in float32
# and bfloat16, a sliding window at 8,192, MiniLM with capture; a few minutes on 2 cores.
bench: setup
	$(PY) benchmarks/kernels.py --sizes 4096 --causal yes --no-naive --no-memory --out bench-out/kernels.json
	$(PY) benchmarks/models.py --no-long --out bench-out/models.json

# Every table of BENCHMARKS.md: three lengths, naive eager, peak memory at 131,072 tokens (an hour).
bench-full: setup
	$(PY) benchmarks/kernels.py --out bench-out/kernels-full.json
	$(PY) benchmarks/models.py --out bench-out/models-full.json

clean:
	rm -rf .venv .venv-floor attnkit-out bench-out .pytest_cache .hypothesis
