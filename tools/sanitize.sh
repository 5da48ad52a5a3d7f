#!/usr/bin/env bash
# Build recfuse._core with AddressSanitizer + UndefinedBehaviorSanitizer into a separate
# folder and run a chosen pytest subset against it. The normal build (build/) and the
# installed editable package are left alone.
#
#   tools/sanitize.sh                       # build (if needed) + default test subset
#   tools/sanitize.sh tests/test_topk.py -x # build (if needed) + these pytest arguments
#   SANITIZE_BUILD_ONLY=1 tools/sanitize.sh # build and assemble the package only
#   tools/sanitize.sh --python -c 'import recfuse; ...'  # run python under the same env
#
# Layout (ASAN_DIR, default /tmp/asan):
#   build/              cmake + ninja build tree (RECFUSE_CUDA=OFF, -O1 -g, sanitizers)
#   pkg/recfuse/        copy of python/recfuse with the sanitized _core*.so
#   site/sitecustomize.py  drops scikit-build-core's editable finder so that pkg/ wins
#   hypothesis/         hypothesis' example database (not in the repo)
#   logs/               sanitizer reports (log_path), one file per process
#
# Notes
# * CMakeLists.txt adds -O3 to recfuse_cpu after the user flags; a compiler launcher
#   rewrites it to -O1 (better stacks, faster build) without editing CMakeLists.txt.
# * -fsanitize=float-cast-overflow is added: GCC's -fsanitize=undefined leaves it out, and a
#   NaN/inf/huge float converted to an integer is undefined behaviour.
# * libgomp is not instrumented: ASan still sees the OpenMP workers (it intercepts
#   pthread_create) and checks every access recfuse's own code makes in them; what goes
#   unchecked is libgomp's internals. No OpenMP-related report came up in the hunt.
# * Tests that set RLIMIT_AS (test_svd_model/test_als_model/test_resources_hunt/
#   test_persistence_hunt "beyond memory" tests) cannot run under ASan: its shadow memory
#   needs terabytes of address space, so the child dies with MemoryError at import.
# * Reports go to $ASAN_DIR/logs/{asan,ubsan}.<pid>; with recovery on, ASan reports each
#   distinct pc once per process.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASAN_DIR="${ASAN_DIR:-/tmp/asan}"
JOBS="${JOBS:-2}"
PY="${PYTHON:-python}"

mkdir -p "$ASAN_DIR"/{logs,site,pkg,hypothesis}

# ---------------------------------------------------------------- launcher: -O3 -> -O1
cat > "$ASAN_DIR/olevel.sh" <<'EOF'
#!/usr/bin/env bash
args=()
for a in "$@"; do
  case "$a" in
    -O2|-O3|-Ofast) args+=("-O1") ;;
    -flto|-flto=*|-fno-fat-lto-objects) ;;
    *) args+=("$a") ;;
  esac
done
exec "${args[@]}"
EOF
chmod +x "$ASAN_DIR/olevel.sh"

# ---------------------------------------------------------------- configure + build
# -fsanitize-recover=address: with ASAN_OPTIONS=halt_on_error=0 a run goes on after a report
# (and lists them all); without it the first ASan report ends the process.
SAN="-fsanitize=address,undefined -fsanitize=float-cast-overflow -fsanitize-recover=address -fno-omit-frame-pointer -g"
# SANITIZE_GLIBCXX_ASSERTIONS=1 adds -D_GLIBCXX_ASSERTIONS (std::vector::operator[] range
# checks): stricter, but each failed check aborts the process (no recovery).
[[ "${SANITIZE_GLIBCXX_ASSERTIONS:-0}" == 1 ]] && SAN="$SAN -D_GLIBCXX_ASSERTIONS"
# Configured every time (fast; a change of flags rebuilds everything).
cmake -S "$REPO" -B "$ASAN_DIR/build" -G Ninja >/dev/null \
    -DRECFUSE_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_CXX_FLAGS="$SAN" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
    -DCMAKE_CXX_COMPILER_LAUNCHER="$ASAN_DIR/olevel.sh" \
    -DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF \
    -DPython_EXECUTABLE="$(command -v "$PY")" \
    -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)"
RECFUSE_CUDA=OFF ninja -C "$ASAN_DIR/build" -j "$JOBS" _core

# ---------------------------------------------------------------- assemble the package
rm -rf "$ASAN_DIR/pkg/recfuse.new"
mkdir -p "$ASAN_DIR/pkg/recfuse.new"
(cd "$REPO/python/recfuse" && tar --exclude=__pycache__ --exclude='*.so' -cf - .) \
  | (cd "$ASAN_DIR/pkg/recfuse.new" && tar -xf -)
cp "$ASAN_DIR"/build/_core*.so "$ASAN_DIR/pkg/recfuse.new/"
rm -rf "$ASAN_DIR/pkg/recfuse"
mv "$ASAN_DIR/pkg/recfuse.new" "$ASAN_DIR/pkg/recfuse"

cat > "$ASAN_DIR/site/sitecustomize.py" <<'EOF'
# Imported after the .pth files: remove scikit-build-core's editable finders (they would
# route `import recfuse` to the source tree and the normal build) so that the sanitized
# copy on PYTHONPATH is imported.
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__name__.startswith("ScikitBuild")]
EOF

# ---------------------------------------------------------------- environment
LIBASAN="$(gcc -print-file-name=libasan.so)"
LIBUBSAN="$(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD="$LIBASAN:$LIBUBSAN${LD_PRELOAD:+:$LD_PRELOAD}"
export PYTHONPATH="$ASAN_DIR/site:$ASAN_DIR/pkg${PYTHONPATH:+:$PYTHONPATH}"
# Python leaks by design; keep going after a report so one run lists them all; a report
# also goes to logs/ (one file per pid) so that reports from subprocesses are kept.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=0:abort_on_error=0:allocator_may_return_null=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:log_path=$ASAN_DIR/logs/asan}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=0:log_path=$ASAN_DIR/logs/ubsan}"
export HYPOTHESIS_STORAGE_DIRECTORY="$ASAN_DIR/hypothesis"
export PYTHONDONTWRITEBYTECODE=1
export RECFUSE_CUDA=OFF
# tests/test_sanitizer_hunt.py runs its sanitizer-only checks where this is set.
export RECFUSE_SANITIZED_DIR="$ASAN_DIR"

"$PY" -c 'import recfuse, recfuse._core as c, sys; assert recfuse.__file__.startswith(sys.argv[1]), recfuse.__file__; print("sanitized recfuse:", c.__file__)' "$ASAN_DIR/pkg"

[[ "${SANITIZE_BUILD_ONLY:-0}" == 1 ]] && exit 0

if [[ "${1:-}" == "--python" ]]; then
  shift
  exec "$PY" "$@"
fi

cd "$REPO"
if [[ $# -eq 0 ]]; then
  set -- tests/test_native_boundary_hunt.py tests/test_topk.py tests/test_topk_hunt.py \
         tests/test_interactions.py tests/test_metrics.py tests/test_sgd_backends.py \
         tests/test_als_backends.py tests/test_mlp.py tests/test_sanitizer_hunt.py \
         -k "not numba and not cupy and not cuda"
fi
"$PY" -m pytest -q -p no:cacheprovider "$@"
echo "sanitizer reports (if any): $(ls "$ASAN_DIR"/logs 2>/dev/null | wc -l) file(s) in $ASAN_DIR/logs"
