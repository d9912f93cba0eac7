# The README's two commands: `make demo` and `make test`. Both set everything up first.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CSRC    := $(wildcard csrc/*.c csrc/*.h csrc/cdef/*.cdef) build_ffi.py src/sslports/_version.py
CFLAGS_CHECK := -std=c99 -Wall -Wextra -Wshadow -Werror -fsyntax-only -Icsrc -DSP_BUILD_VERSION='"check"'

.PHONY: all setup build demo test lint cwarn pytest bench asan clean

all: test

$(STAMP): pyproject.toml setup.py scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel 'cffi>=2'
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

# Rebuild the native module in place whenever a C source, a cdef piece or the version changes.
src/sslports/.native-built: $(STAMP) $(CSRC)
	@mkdir -p build
	$(VPY) setup.py -q build_ext --inplace > build/native-build.log 2>&1 || (cat build/native-build.log; exit 1)
	touch $@

setup: src/sslports/.native-built

build: setup

demo: setup
	$(VPY) -m sslports demo

cwarn:
	@for f in csrc/*.c; do $(CC) $(CFLAGS_CHECK) $$f || exit 1; done

lint: setup
	$(VPY) -m ruff check src tests bench build_ffi.py
	$(VPY) -m ruff format --check src tests bench build_ffi.py
	$(VPY) -m mypy --strict src/sslports

pytest: setup
	$(VPY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: setup cwarn lint pytest

bench: setup
	$(VPY) bench/run_all.py

clean:
	rm -rf build dist *.egg-info src/*.egg-info src/sslports/_native* src/sslports/.native-built
