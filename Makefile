# The README's two commands: `make demo` and `make test`. Both set everything up first.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CSRC    := $(wildcard csrc/*.c csrc/*.h csrc/py/*.c csrc/cdef/*.cdef) build_ffi.py setup.py \
           src/sslports/_version.py
CFLAGS_CHECK := -std=c99 -Wall -Wextra -Wshadow -Werror -fsyntax-only -Icsrc -DSP_BUILD_VERSION='"check"'

.PHONY: all setup build demo docs test lint cwarn crosscheck pytest bench asan clean

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

# The guide (docs/) as a static site in build/docs, with the `docs` extra (MkDocs) in .venv.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(VPY) -m pip install -q -e '.[docs]'
	touch $@

docs: setup $(DOCS_STAMP)
	$(VPY) -m mkdocs build --strict --clean --config-file docs/mkdocs.yml --site-dir $(CURDIR)/build/docs

# Our C compiles with -Wall -Wextra -Wshadow as errors, and keeps to 100 columns (as ruff does).
cwarn: $(STAMP)
	@for f in csrc/*.c; do $(CC) $(CFLAGS_CHECK) $$f || exit 1; done
	@$(CC) $(CFLAGS_CHECK) $$($(VPY) -c 'import sysconfig; print("-I" + sysconfig.get_paths()["include"])') \
		csrc/py/sp_fastport.c
	@awk 'length > 100 { print FILENAME ":" FNR ": longer than 100 columns"; bad = 1 } END { exit bad }' \
		csrc/*.c csrc/*.h csrc/py/*.c fuzz/c/*.c fuzz/c/*.h bench/c/*.c tests/*.c

# The same C compiled for Windows (mingw-w64 gcc, clang targeting it) and with clang, syntax
# only, warnings as errors; apt-installs those compilers when missing. Not part of `make test`.
crosscheck: $(STAMP)
	VPY=$(VPY) bash scripts/cross_check.sh

lint: setup
	$(VPY) -m ruff check src tests bench scripts build_ffi.py setup.py
	$(VPY) -m ruff format --check src tests bench scripts build_ffi.py setup.py
	$(VPY) -m mypy --strict src/sslports
	$(VPY) -m mypy --strict --python-version 3.13 src/sslports  # (newer stdlib stubs)
	$(VPY) -m mypy --strict --python-version 3.10 src/sslports  # (the oldest mypy 2 checks)
	$(VPY) -m mypy --strict bench/*.py

pytest: setup
	$(VPY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: setup cwarn lint pytest

bench: setup
	$(VPY) bench/run_all.py

clean:
	rm -rf build dist *.egg-info src/*.egg-info src/sslports/_native* src/sslports/_fastport* \
		src/sslports/.native-built

# Build the sdist and, from it, the Linux wheel; repair it into a manylinux wheel (auditwheel
# vendors the OpenSSL it links: the system one unless SSLPORTS_OPENSSL_DIR says otherwise); install
# it into a fresh venv outside the tree and run tests/smoke.py and the test suite against it.
.PHONY: wheel
wheel: $(STAMP)
	VPY=$(VPY) PY=$(PY) bash scripts/test-wheel.sh

# Reliability and security checks (SECURITY.md). Each runs on demand, not in `make test`.
FUZZ_SECONDS ?= 60
.PHONY: fuzz fuzz-c asan tsan test-openssl test-python valgrind soak integrity chaos
# Every fuzz target for FUZZ_SECONDS each (atheris when it installs, else hypothesis).
fuzz: setup
	@$(VPY) -c 'import atheris' 2>/dev/null || $(VPY) -m pip install -q atheris || true
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(VPY) fuzz/run.py
# The C shim itself under libFuzzer (fuzz/c/: harnesses that call csrc/ directly, with ASan and
# UBSan), FUZZ_SECONDS per harness, one after the other; needs clang (not `make test`, whose
# tests/test_fuzz_c.py replays their corpora with cc).
fuzz-c:
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz-c.sh
# The tests against a copy of the extension built with -fsanitize=address,undefined.
asan: setup
	VPY=$(VPY) bash scripts/asan.sh
# The thread-heavy tests against a copy built with -fsanitize=thread (suppressions, each with
# its reason: scripts/tsan.supp); fails on any report.
tsan: setup
	VPY=$(VPY) bash scripts/tsan.sh
# The tests against the OpenSSL the wheels carry (3.5 LTS, built from its pinned tarball into
# build/openssl once) instead of the system's; .ci/run runs it after `make test`.
test-openssl: setup
	VPY=$(VPY) bash scripts/test-openssl.sh
# The collector's tests on the newest CPython 3.12+ found (PATH or pyenv; own venv and build in
# build/pyX.Y): from 3.12 sockets are cyclic garbage too. Then the whole suite on the oldest
# supported CPython found (3.9, else 3.10), and on a debug build of CPython (python3-dbg: its
# checks abort on C API misuse). .ci/run runs it after `make test`.
test-python:
	bash scripts/test-python.sh
	bash scripts/test-python.sh --oldest
	bash scripts/test-python.sh --debug
# A test subset under valgrind; fails on a definite leak through csrc/ or _native.
valgrind: setup
	VPY=$(VPY) bash scripts/valgrind.sh
# 20 000 connections and 1 000 contexts; fails if RSS grows by 2 MB or more after warm-up.
soak: setup
	$(VPY) scripts/soak.py
# 8 concurrent full-duplex connections, INTEGRITY_MIB MiB each way on each; fails on any SHA-1
# or byte-count mismatch between the two ends.
INTEGRITY_MIB ?= 256
integrity: setup
	$(VPY) scripts/integrity.py --mib $(INTEGRITY_MIB)
# Many connections at once for CHAOS_SECONDS, seeded (CHAOS_SEED; random when empty, printed):
# sslports at both ends and against Python's ssl, openssl s_server / s_client, with resets,
# half-closes, garbage, timeouts, closes from other threads (scripts/chaos.py). Fails on an
# exception type API.md does not name, a lost or corrupted byte, a hang (stack dump), or
# descriptors, threads or RSS not back at the end. CHAOS_ASAN=1 runs it on the sanitized build
# scripts/asan.sh makes (build/asan/tree; run `make asan` or scripts/asan.sh once first).
CHAOS_SECONDS ?= 600
CHAOS_SEED ?=
chaos: setup
	@if [ -n "$(CHAOS_ASAN)" ]; then \
		PYTHONPATH=build/asan/site:build/asan/tree/src LD_PRELOAD=$$($(CC) -print-file-name=libasan.so) \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONMALLOC=malloc \
		$(VPY) scripts/chaos.py --seconds $(CHAOS_SECONDS) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED)); \
	else \
		$(VPY) scripts/chaos.py --seconds $(CHAOS_SECONDS) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED)); \
	fi
