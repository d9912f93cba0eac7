"""The C fuzz harnesses of fuzz/c/, replayed without libFuzzer.

`make fuzz-c` runs them under libFuzzer (clang). Here each harness is built with the machine's
C compiler (with AddressSanitizer, LeakSanitizer and UBSan when it has them) around a small
main() that runs its LLVMFuzzerTestOneInput once over every input of fuzz/c/corpus/<harness>:
the seeds (real handshakes' transcripts, real keys and certificates) and every crash
regression the fuzzers found. A change in csrc/ that breaks what the harnesses check (an
invariant of the pump's API, a leak, a sanitizer report) fails here, on any machine that can
run the test suite.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz" / "c"
HARNESSES = ["server", "client", "server_sock", "client_sock", "pair", "load", "cert"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
CFLAGS = [
    "-std=c99",
    "-D_DEFAULT_SOURCE",
    "-O1",
    "-g",
    "-Wall",
    "-Wextra",
    "-Wshadow",
    "-Werror",
    f"-I{ROOT / 'csrc'}",
    f"-I{FUZZ}",
    '-DSP_BUILD_VERSION="fuzz"',
]
LIBS = ["-lssl", "-lcrypto", "-lpthread", "-ldl"]
RUN_ENV = {
    **os.environ,
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


def _cc() -> list[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def _sanitizers_work(cc: list[str], tmp: Path) -> bool:
    """Can cc build and run a program with ASan and UBSan here (leak checks included)?"""
    src = tmp / "probe.c"
    src.write_text("#include <stdlib.h>\nint main(void) { free(malloc(1)); return 0; }\n")
    built = subprocess.run(
        [*cc, *SANITIZE, str(src), "-o", str(tmp / "probe")], capture_output=True, check=False
    )
    if built.returncode != 0:
        return False
    ran = subprocess.run([str(tmp / "probe")], env=RUN_ENV, capture_output=True, check=False)
    return ran.returncode == 0


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The csrc/ objects and fz_common.o, compiled once: (their directory, the flags)."""
    cc = _cc()
    if shutil.which(cc[0]) is None:
        pytest.fail(f"no C compiler {cc[0]!r} (the build needs one too)")
    out = tmp_path_factory.mktemp("fuzz-c")
    flags = [*CFLAGS, *(SANITIZE if _sanitizers_work(cc, out) else [])]
    sources = [*sorted((ROOT / "csrc").glob("*.c")), FUZZ / "fz_common.c"]

    def compile_one(src: Path) -> subprocess.CompletedProcess[str]:
        cmd = [*cc, *flags, "-c", str(src), "-o", str(out / (src.stem + ".o"))]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for src, done in zip(sources, pool.map(compile_one, sources)):
            assert done.returncode == 0, f"{src.name}:\n{done.stderr}"
    return out, flags


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_replays_its_corpus(build: tuple[Path, list[str]], name: str) -> None:
    out, flags = build
    exe = out / f"replay_{name}"
    sources = [str(FUZZ / f"fuzz_{name}.c"), str(FUZZ / "replay_main.c")]
    objects = sorted(str(p) for p in out.glob("*.o"))
    link = subprocess.run(
        [*_cc(), *flags, *sources, *objects, "-o", str(exe), *LIBS],
        capture_output=True,
        text=True,
        check=False,
    )
    assert link.returncode == 0, link.stderr
    # (X_sock: the socket-mode target of harness X reads X's inputs too)
    names = {name, name.removesuffix("_sock")}
    corpora = sorted(d for d in (FUZZ / "corpus" / n for n in names) if d.is_dir())
    inputs = [p for d in corpora for p in d.iterdir() if p.is_file() and p.name[0] != "."]
    assert inputs, f"no inputs for {name}"
    ran = subprocess.run(
        [str(exe), *map(str, corpora)], env=RUN_ENV, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    assert ran.stdout.strip() == f"replayed {len(inputs)} inputs", ran.stdout
