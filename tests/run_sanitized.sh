#!/usr/bin/env bash
# Runs pytest against a sanitizer build of pykvstore._C without touching the
# normal pykvstore/_C*.so other processes use: BUILD/site/pykvstore is the
# source package linked file by file, with BUILD/lib's _C in place of the
# normal one, first on PYTHONPATH (the cwd too, for `python -m`). The
# sanitizer runtime (and libstdc++, or the first C++ exception aborts) is
# preloaded into the uninstrumented interpreter. `make sanitize` calls this.
# Reports go to BUILD/reports/ from every process, the test's subprocesses too
# (pytest's capture would swallow a report on stderr, and a child's failure may
# be what a test expects): any report there fails the run, and is printed.
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
reports="$build/reports"
rm -rf "$reports"
mkdir -p "$reports"
case "$kind" in
  address)
    runtime=$($cxx -print-file-name=libasan.so)
    # leaks: the interpreter keeps its objects at exit by design
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=0}:log_path=$reports/asan
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}:log_path=$reports/ubsan
    ;;
  thread)
    # No suppressions: CPython, torch and libgomp are not instrumented (TSan
    # sees only _C's accesses and the libc calls it intercepts), the GIL and
    # every lock are pthreads it intercepts, and a clean run reports nothing.
    runtime=$($cxx -print-file-name=libtsan.so)
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}:log_path=$reports/tsan
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
rc=0
"$py" -m pytest -p no:cacheprovider --rootdir "$root" -c "$root/pyproject.toml" "$@" || rc=$?
if [ -n "$(ls -A "$reports")" ]; then
  for f in "$reports"/*; do echo "=== $f" >&2; cat "$f" >&2; done
  echo "$kind sanitizer: $(ls "$reports" | wc -l) report file(s) in $reports" >&2
  [ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
