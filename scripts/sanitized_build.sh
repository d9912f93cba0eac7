# shellcheck shell=bash
# Shared by scripts/asan.sh, scripts/tsan.sh and scripts/test-openssl.sh (sourced, not run):
# build a copy of the extension that the tests then import instead of the normal one.
#
#   build_copy NAME [VAR=VALUE ...]           (a copy built with those build settings)
#   sanitized_build NAME SANITIZERS RUNTIME    (asan address,undefined libasan.so)
#
# The copy of the sources is built under build/NAME/tree (build_ffi.py reads SSLPORTS_SANITIZE
# and SSLPORTS_OPENSSL_DIR), so the normal in-place extension in src/ is never replaced and
# other runs keep working meanwhile. Sets ROOT, VPY, CC, OUT, TREE; exports PYTHONPATH (the
# copy first); sanitized_build also exports LD_PRELOAD (the sanitizer's runtime: CPython itself
# is not instrumented).
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
VPY=${VPY:-$ROOT/.venv/bin/python}
case "$VPY" in /*) ;; *) VPY=$ROOT/$VPY ;; esac
CC=${CC:-gcc}

build_copy() {
  local name=$1
  shift
  OUT=$ROOT/build/$name
  TREE=$OUT/tree
  if [ ! -e src/sslports/.native-built ]; then
    # (tests that start a child process give it src/ itself: without the normal build there,
    # a dozen of them fail with "cannot load the sslports native module")
    echo "$name: build the normal extension first (make setup)" >&2
    exit 2
  fi
  echo "$name: building the extension in $TREE${*:+ ($*)}"
  rm -rf "$TREE" "$OUT"/"$name".[0-9]*
  mkdir -p "$TREE/src"
  cp -r csrc build_ffi.py setup.py pyproject.toml "$TREE/"
  [ -f README.md ] && cp README.md "$TREE/"
  cp -r src/sslports "$TREE/src/"
  rm -f "$TREE"/src/sslports/_native*.so "$TREE"/src/sslports/_fastport*.so \
    "$TREE"/src/sslports/_native.c "$TREE"/src/sslports/.native-built
  (cd "$TREE" && env "$@" CC="$CC" "$VPY" setup.py -q build_ext --inplace) \
    >"$OUT/build.log" 2>&1 || { cat "$OUT/build.log"; exit 1; }
  export PYTHONPATH="$TREE/src${PYTHONPATH:+:$PYTHONPATH}"
}

sanitized_build() {
  local name=$1 sanitizers=$2 runtime=$3 lib
  lib=$("$CC" -print-file-name="$runtime")
  if [ ! -e "$lib" ] || [ "$lib" = "$runtime" ]; then
    echo "$name.sh: $CC has no $runtime (install gcc's sanitizer runtime)" >&2
    exit 2
  fi
  build_copy "$name" SSLPORTS_SANITIZE="$sanitizers"
  write_sitecustomize
  export PYTHONPATH="$OUT/site:$PYTHONPATH"
  export LD_PRELOAD="$lib"
}

# The sanitizer's runtime must be preloaded into every Python process that loads the sanitized
# module (the CLI tests start some), but not into other tools the tests run: curl, for one, hangs
# at start with it. This sitecustomize takes LD_PRELOAD out of the environment once Python has started and
# puts it back only for children that are Python.
write_sitecustomize() {
  mkdir -p "$OUT/site"
  cat >"$OUT/site/sitecustomize.py" <<'PY'
import os
import shutil
import subprocess
import sys

_PRELOAD = os.environ.pop("LD_PRELOAD", "")


def _is_python(args, shell):
    if shell:
        return False
    prog = args if isinstance(args, (str, bytes, os.PathLike)) else args[0]
    if not isinstance(args, (str, bytes, os.PathLike)) and len(args) > 4:
        if os.path.basename(os.fsdecode(prog)) == "ip" and list(args[1:3]) == ["netns", "exec"]:
            return _is_python(args[4:], shell)  # (ip netns exec NAME cmd...: what it runs)
    prog = shutil.which(os.fsdecode(prog)) or os.fsdecode(prog)
    if prog == sys.executable or os.path.basename(prog).startswith("python"):
        return True
    try:
        with open(prog, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first.startswith(b"#!") and b"python" in first


if _PRELOAD:
    _init = subprocess.Popen.__init__

    def _popen_init(self, args, *a, **kw):
        env = dict(kw["env"] if kw.get("env") is not None else os.environ)
        own = env.pop("LD_PRELOAD", "")  # (a test's own shim: kept, after the runtime)
        if _is_python(args, kw.get("shell", False)):
            own = " ".join(filter(None, [_PRELOAD, own]))
        if own:
            env["LD_PRELOAD"] = own
        kw["env"] = env
        _init(self, args, *a, **kw)

    subprocess.Popen.__init__ = _popen_init
PY
}
