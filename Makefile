# flashevolve developer entry points. Everything runs inside a project-local virtualenv (.venv).
#   make demo          install, build the embedded llama-server, run a 3-minute sync vs async demo
#   make lab           install, open the notebooks in JupyterLab (the project's venv and kernel)
#   make test          install dev extras, build llama-server (cached), run tests and notebooks
#   make llama-server  build and cache llama-server + fetch the default model (once, ~10 min)
#   make lint          ruff check + ruff format --check
#   make typecheck     mypy, strict, over flashevolve/ (settings in pyproject.toml [tool.mypy])
#   make clean         remove build litter (keeps .venv and the llama-server cache)

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python

.PHONY: demo lab test llama-server lint typecheck clean distclean install-local install-dev browser sandbox-tools

# The venv is created once; its python is the target that says it exists.
$(PYTHON):
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip

# JupyterLab (the lab extra) comes with every install: the notebooks are how most people use
# flashevolve, and `.venv/bin/jupyter lab notebooks/` should work after `make demo`.
install-local: $(PYTHON)
	$(BIN)/pip install --quiet -e '.[local,lab]'

install-dev: $(PYTHON)
	$(BIN)/pip install --quiet -e '.[dev,local,lab]'

# Builds only when the cache has no binary (prints "cached" otherwise).
llama-server: install-local
	$(PYTHON) -m flashevolve local-server build

demo: install-local
	$(PYTHON) -m flashevolve local-server build
	$(BIN)/flashevolve run --task ifeval-lite --backend local --mode sync,async --minutes 3 --out runs/demo --overwrite

# The notebooks in JupyterLab, with this venv's Python as the kernel. Notebook 01 also needs
# the llama-server (`make llama-server`, or after `make demo`). LAB_ARGS passes options on,
# e.g. `make lab LAB_ARGS="--port 8899 --no-browser"`; as root, --allow-root is added.
LAB_ARGS ?=
lab: install-local
	$(BIN)/jupyter lab notebooks/ $(LAB_ARGS) $$([ "$$(id -u)" = 0 ] && echo --allow-root)

test: install-dev browser sandbox-tools
	$(PYTHON) -m flashevolve local-server build
	$(PYTHON) -m pytest -q
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		$(PYTHON) -m pytest -q --nbmake notebooks/; \
	else \
		echo "no notebooks/*.ipynb yet: notebook step skipped"; \
	fi

# Headless Chromium lets the browser tests check that the report's charts draw and that the
# notebook dashboard works in JupyterLab (Playwright drives this Chromium; it never downloads
# one). Installed only where we are root with apt (CI, containers); elsewhere those tests skip
# and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	  echo "chromium not installed: the browser tests (report, JupyterLab) will be skipped"; }

# bubblewrap isolates generated code (docs/security.md). Installed where we are root with apt
# (CI, containers); elsewhere the sandbox falls back to weaker layers and protections() says so.
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || \
	  echo "bubblewrap not installed: the sandbox falls back to weaker isolation"; }

lint: $(PYTHON)
	$(BIN)/ruff check flashevolve tests
	$(BIN)/ruff format --check flashevolve tests

# mypy comes with the dev extra (`make test` installs it; so does install-dev).
typecheck: install-dev
	$(BIN)/mypy

clean:
	rm -rf build dist .pytest_cache .ruff_cache .mypy_cache runs/demo
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print | xargs rm -rf

# Also drops the virtualenv. The llama-server/model cache lives outside the repo
# (${FLASHEVOLVE_CACHE:-~/.cache/flashevolve}); delete it by hand to force a rebuild.
distclean: clean
	rm -rf $(VENV)
