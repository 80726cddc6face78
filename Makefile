# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
PIP := .venv/bin/pip
TEXT ?= a fluffy blue creature roamed the verdant forest

.PHONY: setup demo test bench bench-full clean browser

setup: .venv/.stamp-installed

.venv/.stamp-installed: pyproject.toml
	python3 -m venv .venv
	# The CPU wheel of torch lies on these machines' disk; pin it before anything pulls a CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[all,test]'
	touch $@

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
	rm -rf .venv attnkit-out bench-out .pytest_cache .hypothesis
