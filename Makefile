# Two entry points, both idempotent and offline: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast install browser english clean

install: $(STAMP) english

# The report test opens report.html in Debian's chromium; install it where apt can.
browser:
	@if ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
			|| (apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null) \
			|| echo "chromium could not be installed: the browser test will be skipped"; \
		else echo "chromium is not installed: the browser test will be skipped"; fi; \
	fi

# The zoo's broad English text (finetrace.zoo.english) is read from these Debian packages.
ENGLISH_PACKAGES := wordnet-base bible-kjv dict-devil
english:
	@if [ "$$(dpkg-query -W -f='$${Status}\n' $(ENGLISH_PACKAGES) 2>/dev/null | grep -c ' installed$$')" \
			!= "$(words $(ENGLISH_PACKAGES))" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y --no-install-recommends $(ENGLISH_PACKAGES) >/dev/null 2>&1 \
			|| (apt-get update >/dev/null && apt-get install -y --no-install-recommends $(ENGLISH_PACKAGES) >/dev/null) \
			|| echo "the English corpus packages could not be installed: $(ENGLISH_PACKAGES)"; \
		else echo "install the English corpus packages as root: apt-get install $(ENGLISH_PACKAGES)"; fi; \
	fi

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,embeddings,gguf]'
	touch $(STAMP)

demo: install
	$(BIN)/finetrace demo

test: install browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

# The unit tests that need neither the zoo nor a subprocess: the edit-run loop.
test-fast: install
	$(BIN)/python -m pytest -m "not zoo and not slow"

clean:
	rm -rf $(VENV) finetrace-demo
