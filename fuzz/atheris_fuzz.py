"""Coverage-guided fuzzing of one sslports target with atheris (libFuzzer for Python).

    python fuzz/atheris_fuzz.py TARGET [libFuzzer options] [CORPUS_DIR ...]

TARGET is one of fuzz/fuzz_targets.py's TARGETS. The Python code of sslports (and of the targets) is
instrumented for coverage; the C extension is not (it is exercised, and ``make asan`` runs it
under AddressSanitizer). An exception other than the documented ones, a crash or a case slower
than ``-timeout`` seconds is reported by libFuzzer as a finding, with the input saved to a file.
fuzz/run.py (``make fuzz``) runs every target for a set time.
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

with atheris.instrument_imports(include=["sslports", "fuzz_targets"]):
    import fuzz_targets as targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__)
    name = sys.argv.pop(1)
    target = targets.target_named(name)

    def one_input(data: bytes) -> None:
        target(data)

    atheris.Setup(sys.argv, one_input)
    try:
        atheris.Fuzz()
    finally:
        targets.cleanup()


if __name__ == "__main__":
    main()
