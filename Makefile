# The two Quick-start commands: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint install migrate demo bench clean chromium bytecode

$(STAMP): requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-input -r requirements.lock
	@touch $(STAMP)

install: $(STAMP)

# Where PYTHONDONTWRITEBYTECODE is set (it is on some machines), every process would compile
# the whole app again at start (0.5-0.7 s of CPU each, measured on `import app`); compiled once
# here, they read it.
SOURCES := app.py server.py container.py core storage handlers wechat bridge payments jobs miniprogram_api bot console ops
bytecode: $(STAMP)
	@$(PY) -m compileall -q $(SOURCES)

run: $(STAMP) bytecode
	$(PY) server.py migrate
	$(PY) server.py load-demo
	$(PY) server.py serve

# Three pytest workers: most tests wait on servers and sockets, so three keep two cores busy.
PYTEST_ARGS ?= -n 3

# The console's browser tests drive Debian's Chromium (Playwright never downloads a browser here).
chromium:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium \
		|| (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "make: install Debian's chromium package for the browser tests (tests/browser)"

test: $(STAMP) chromium bytecode
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Every benchmark; quick mode (a few minutes, one table of ratios, RESULTS.md untouched) unless
# FULL=1 (the full runs, each rewriting its section of benchmarks/RESULTS.md). ONLY=bot,callbacks
# runs a subset.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(if $(FULL),--full) $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) var .pytest_cache
