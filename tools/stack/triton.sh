#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Local Triton Inference Server 2.51 (CPU, Python backend only) on loopback.
#   install | start | stop | status
#   HTTP 127.0.0.1:28000, gRPC 127.0.0.1:28001, metrics 127.0.0.1:28002
#   model repository: $TAXONSTREAM_MODEL_REPOSITORY (default $STACK_DIR/models)
set -euo pipefail
COMPONENT=triton
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HTTP_PORT=28000
GRPC_PORT=28001
METRICS_PORT=28002
# The tritonserver binary ships inside this wheel; it is unpacked, never pip-installed
# (pytriton itself pins numpy<2 and more).
PYTRITON_REQ=nvidia-pytriton==0.7.0
PYTRITON_SHA256=21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df
# The wheel's layout is kept: the binaries find nvidia_pytriton.libs through $ORIGIN rpaths.
PT_HOME=$OPT_DIR/nvidia-pytriton-0.7.0
TRITON_HOME=$PT_HOME/pytriton/tritonserver
TRITON_LIBS=$PT_HOME/nvidia_pytriton.libs
MODEL_REPO=${TAXONSTREAM_MODEL_REPOSITORY:-$STACK_DIR/models}
START_TIMEOUT=${TAXONSTREAM_TRITON_START_TIMEOUT:-180}
REPO_FILE=$DATA_DIR/triton/model-repository   # which repository the running server serves

installed() { [[ -f $PT_HOME/.taxonstream-installed ]]; }

do_install() {
  installed && return 0
  local t0 whl tmp
  t0=$(now_ms)
  ensure_dirs
  require_python
  whl=$(compgen -G "$DOWNLOAD_DIR/nvidia_pytriton-0.7.0-*.whl" | head -n1 || true)
  if [[ -z $whl ]]; then
    pip_download_pinned "$PYTRITON_REQ" "$PYTRITON_SHA256"
    whl=$(compgen -G "$DOWNLOAD_DIR/nvidia_pytriton-0.7.0-*.whl" | head -n1) || die "pytriton wheel missing"
  fi
  check_sha "$whl" sha256 "$PYTRITON_SHA256"
  tmp=$(mktemp -d "$OPT_DIR/.pytriton.XXXXXX")
  # only the server tree and its bundled libraries; zipfile drops the exec bits, so restore them
  "$PYTHON" - "$whl" "$tmp" <<'PY'
import os, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        name = info.filename
        if not (name.startswith("pytriton/tritonserver/") or name.startswith("nvidia_pytriton.libs/")):
            continue
        path = z.extract(info, dest)
        mode = (info.external_attr >> 16) & 0o777
        if not info.is_dir() and mode:
            os.chmod(path, mode)
PY
  chmod 755 "$tmp/pytriton/tritonserver/bin/tritonserver" "$tmp"/pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub
  rm -rf "$PT_HOME"
  mv "$tmp" "$PT_HOME"
  touch "$PT_HOME/.taxonstream-installed"
  say "installed tritonserver in $TRITON_HOME ($(($(now_ms) - t0)) ms)"
}

# The Python-backend stub must match the interpreter whose packages the models import.
python_env() {
  "$PYTHON" -c 'import sys, sysconfig; print(f"{sys.version_info[0]}.{sys.version_info[1]}"); print(sysconfig.get_config_var("LIBDIR"))'
}

prepare_backend() {
  local pyver=$1 src dst
  src=$TRITON_HOME/python_backend_stubs/$pyver/triton_python_backend_stub
  dst=$TRITON_HOME/backends/python/triton_python_backend_stub
  [[ -x $src ]] || die "no Python-backend stub for Python $pyver in $TRITON_HOME/python_backend_stubs"
  cmp -s "$src" "$dst" 2>/dev/null || cp -f "$src" "$dst"
}

# On a failed start: Triton's error lines of this run (model load errors hide above its tables).
start_failure_hint() {
  local errors
  errors=$(current_log triton | grep -E '^E[0-9]{4} ' | grep -v 'CudaDriverHelper has not been initialized' || true)
  [[ -n $errors ]] && printf -- '----- triton errors\n%s\n-----\n' "$errors"
}

ready() { [[ $(http_code 127.0.0.1 "$HTTP_PORT" /v2/health/ready) == 200 ]]; }
live() { [[ $(http_code 127.0.0.1 "$HTTP_PORT" /v2/health/live) == 200 ]]; }

do_start() {
  local t0 env_lines pyver libdir venv_bin repo
  t0=$(now_ms)
  installed || do_install
  require_python
  if [[ -z ${TAXONSTREAM_MODEL_REPOSITORY:-} ]]; then mkdir -p "$MODEL_REPO"; fi
  [[ -d $MODEL_REPO ]] || die "model repository $MODEL_REPO does not exist"
  repo=$(cd "$MODEL_REPO" && pwd)
  WATCH=(triton)
  if is_running triton; then
    if [[ -f $REPO_FILE && $(<"$REPO_FILE") != "$repo" ]]; then
      die "triton is already running with model repository $(<"$REPO_FILE"); run '$0 stop' first to serve $repo"
    fi
  else
    for p in "$HTTP_PORT" "$GRPC_PORT" "$METRICS_PORT"; do port_free_or_die "$p" triton; done
    env_lines=$(python_env)
    pyver=${env_lines%%$'\n'*}
    libdir=${env_lines#*$'\n'}
    [[ -e $libdir/libpython$pyver.so.1.0 ]] ||
      say "warning: $libdir has no libpython$pyver.so.1.0; the stub may pick the system libpython and fail"
    prepare_backend "$pyver"
    venv_bin=$(cd "$(dirname "$PYTHON")" && pwd)
    mkdir -p "$DATA_DIR/triton"
    printf '%s\n' "$repo" >"$REPO_FILE"
    # LD_LIBRARY_PATH: the interpreter's own libpython (else Debian's 3.11.2 is loaded and models
    # crash at load); PATH: the stub finds the venv (numpy, onnxruntime) through its python.
    # --model-control-mode=explicit with --load-model=* loads everything at start (a model that
    # fails to load fails the start) and still allows load/unload through the repository API.
    spawn triton env \
      LD_LIBRARY_PATH="$libdir:$TRITON_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      PATH="$venv_bin:$PATH" \
      "$TRITON_HOME/bin/tritonserver" \
      --model-repository="$repo" \
      --backend-directory="$TRITON_HOME/backends" \
      --cache-directory="$TRITON_HOME/caches" \
      --model-control-mode=explicit --load-model='*' \
      --strict-readiness=true --exit-on-error=true --exit-timeout-secs=5 \
      --http-address=127.0.0.1 --http-port="$HTTP_PORT" \
      --grpc-address=127.0.0.1 --grpc-port="$GRPC_PORT" \
      --metrics-address=127.0.0.1 --metrics-port="$METRICS_PORT" \
      --allow-gpu-metrics=false --pinned-memory-pool-byte-size=0 \
      --log-verbose=0
    STARTED+=(triton)
  fi
  wait_ready "$START_TIMEOUT" "triton (GET /v2/health/ready on 127.0.0.1:$HTTP_PORT)" ready
  if ((${#STARTED[@]})); then
    say "ready: triton http 127.0.0.1:$HTTP_PORT grpc 127.0.0.1:$GRPC_PORT metrics 127.0.0.1:$METRICS_PORT, models from $repo ($(($(now_ms) - t0)) ms)"
  else
    say "already running: triton http 127.0.0.1:$HTTP_PORT, models from $repo"
  fi
}

do_stop() {
  stop_daemons triton
  rm -f "$REPO_FILE"
}

do_status() {
  status_line triton "http 127.0.0.1:$HTTP_PORT grpc 127.0.0.1:$GRPC_PORT metrics 127.0.0.1:$METRICS_PORT" live
}

main_dispatch "$@"
