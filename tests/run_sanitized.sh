#!/usr/bin/env bash
# Runs pytest against a sanitizer build of pykvstore._C without touching the
# normal pykvstore/_C*.so other processes use: BUILD/site/pykvstore is the
# source package linked file by file, with BUILD/lib's _C in place of the
# normal one, first on PYTHONPATH (the cwd too, for `python -m`). The
# sanitizer runtime (and libstdc++, or the first C++ exception aborts) is
# preloaded into the uninstrumented interpreter. `make sanitize` calls this.
#
# usage: tests/run_sanitized.sh address|thread BUILD_DIR PYTHON [pytest args...]
set -euo pipefail
kind=$1 build=$(cd "$2" && pwd) py=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
site="$build/site"
rm -rf "$site"
mkdir -p "$site/pykvstore"
for f in "$root"/pykvstore/*; do
  case "$(basename "$f")" in _C*.so | __pycache__) ;; *) ln -s "$f" "$site/pykvstore/" ;; esac
done
ln -s "$build"/lib/_C*.so "$site/pykvstore/"
cxx=${CXX:-g++}
case "$kind" in
  address)
    runtime=$($cxx -print-file-name=libasan.so)
    # leaks: the interpreter keeps its objects at exit by design
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    ;;
  thread)
    runtime=$($cxx -print-file-name=libtsan.so)
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
    ;;
  *) echo "kind must be address or thread" >&2; exit 2 ;;
esac
export LD_PRELOAD="$runtime $($cxx -print-file-name=libstdc++.so)${LD_PRELOAD:+ $LD_PRELOAD}"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export PYKVSTORE_CUDA=OFF     # what the sanitizer build is (test_native checks it)
export PYKVSTORE_SANITIZED=$kind
cd "$site"
"$py" - <<'PY'
import pykvstore, pykvstore._C as c
assert pykvstore._C.__file__.startswith(pykvstore.__path__[0]), pykvstore._C.__file__
print("sanitized _C:", c.__file__)
PY
exec "$py" -m pytest -p no:cacheprovider --rootdir "$root" -c "$root/pyproject.toml" "$@"
