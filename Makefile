# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python
PIP := .venv/bin/pip
TEXT ?= a fluffy blue creature roamed the verdant forest

.PHONY: setup demo test bench clean browser

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

bench: setup
	$(PY) benchmarks/kernels.py --out bench-out/kernels.json
	$(PY) benchmarks/models.py --out bench-out/models.json

clean:
	rm -rf .venv attnkit-out bench-out .pytest_cache .hypothesis
