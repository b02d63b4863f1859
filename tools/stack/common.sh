# shellcheck shell=bash
# Shared helpers for the local-stack scripts (kafka.sh, s3.sh, triton.sh). Sourced, never run.
#
# Layout (all state in one folder so a checkout can be wiped with one rm):
#   $STACK_DIR/downloads  fetched archives      $STACK_DIR/opt      unpacked software
#   $STACK_DIR/data/<c>   component data        $STACK_DIR/logs     <daemon>.log
#   $STACK_DIR/pids       <daemon>.pid ("PID STARTTIME")           $STACK_DIR/locks    flock files

STACK_SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$STACK_SCRIPT_DIR/../.." && pwd)
STACK_DIR=${TAXONSTREAM_STACK_DIR:-$REPO_ROOT/.stack}
mkdir -p "$STACK_DIR"
STACK_DIR=$(cd "$STACK_DIR" && pwd)   # absolute: daemons run with other working directories
DOWNLOAD_DIR=$STACK_DIR/downloads
OPT_DIR=$STACK_DIR/opt
DATA_DIR=$STACK_DIR/data
LOG_DIR=$STACK_DIR/logs
PID_DIR=$STACK_DIR/pids
LOCK_DIR=$STACK_DIR/locks
PYTHON=${TAXONSTREAM_PYTHON:-$REPO_ROOT/.venv/bin/python}
# a bare name ("python3") is looked up once: triton.sh needs its directory for PATH
if [[ $PYTHON != */* ]] && command -v "$PYTHON" >/dev/null 2>&1; then PYTHON=$(command -v "$PYTHON"); fi
COMPONENT=${COMPONENT:-stack}
APT_UPDATED=0
WATCH=()   # daemons whose death aborts a readiness wait
STARTED=() # daemons started by this call: stopped again if the call fails

say() { printf '[%s] %s\n' "$COMPONENT" "$*" >&2; }
# die MESSAGE: fail; daemons this call already started (STARTED, below) are stopped again.
die() {
  say "ERROR: $*"
  stop_started
  exit 1
}

ensure_dirs() {
  mkdir -p "$DOWNLOAD_DIR" "$OPT_DIR" "$DATA_DIR" "$LOG_DIR" "$PID_DIR" "$LOCK_DIR"
}

# Monotonic-enough wall clock in milliseconds (EPOCHREALTIME may use a locale comma).
now_ms() { local t=${EPOCHREALTIME//[.,]/}; echo $((t / 1000)); }

# Serialise install/start/stop of one component: pytest workers and the CLI may race.
# fd 9 is closed in every daemon (see spawn) so a daemon never keeps the lock.
take_lock() {
  ensure_dirs
  exec 9>"$LOCK_DIR/$COMPONENT.lock"
  flock -w 900 9 || die "another $COMPONENT script holds $LOCK_DIR/$COMPONENT.lock"
}

require_python() {
  [[ -x $PYTHON ]] || command -v "$PYTHON" >/dev/null 2>&1 ||
    die "Python not found at $PYTHON (create the venv or set TAXONSTREAM_PYTHON)"
}

# ---------------------------------------------------------------------------------------------
# Installing

# need_pkgs PKG...: apt-get install whatever is missing; apt-get update at most once per run.
need_pkgs() {
  local missing=() p
  for p in "$@"; do
    [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == 'install ok installed' ]] || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "missing Debian packages: ${missing[*]} (and no apt-get)"
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "missing Debian packages ${missing[*]}; run as root or install sudo"
    sudo=(sudo)
  fi
  say "installing Debian packages: ${missing[*]}"
  if [[ $APT_UPDATED == 0 ]]; then
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# pip_download_pinned REQUIREMENT SHA256: fetch one wheel (no deps) into downloads/, hash-checked.
# Uses pip so the project's configured package index applies; never installs anything.
pip_download_pinned() {
  local req=$1 sha=$2 reqfile
  require_python
  reqfile=$(mktemp)
  printf '%s --hash=sha256:%s\n' "$req" "$sha" >"$reqfile"
  say "downloading $req"
  if ! "$PYTHON" -m pip download --no-deps --require-hashes --disable-pip-version-check -q \
    -d "$DOWNLOAD_DIR" -r "$reqfile" >&2; then
    rm -f "$reqfile"
    die "pip download $req failed"
  fi
  rm -f "$reqfile"
}

# check_sha FILE ALGO HEX: verify a file's digest (sha256 / sha512).
check_sha() {
  local got
  got=$("${2}sum" "$1" | cut -d' ' -f1)
  [[ $got == "$3" ]] || die "$2 mismatch for $1: got $got"
}

# ---------------------------------------------------------------------------------------------
# Daemons. A pid file holds "PID STARTTIME"; the start time (field 22 of /proc/PID/stat) guards
# against a recycled PID after a reboot, so stop never signals a stranger.

pid_file() { printf '%s/%s.pid' "$PID_DIR" "$1"; }

# proc_stat PID -> "STATE STARTTIME", fails if there is no such process.
proc_stat() {
  local s f
  { s=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
  s=${s##*) }   # the command name may hold spaces and parentheses
  read -r -a f <<<"$s"
  printf '%s %s\n' "${f[0]}" "${f[19]}"
}

# daemon_pid NAME: print the PID if the daemon from the pid file is alive (zombies count as dead:
# the init process here reaps only every ~2 s).
daemon_pid() {
  local f pid start state now
  f=$(pid_file "$1")
  [[ -r $f ]] || return 1
  read -r pid start <"$f" || true
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  read -r state now < <(proc_stat "$pid") || return 1
  [[ $state != [ZX] && $now == "$start" ]] || return 1
  echo "$pid"
}

is_running() { daemon_pid "$1" >/dev/null; }

# spawn NAME CMD [ARG...]: start CMD in its own session (it outlives the calling shell and its
# terminal), stdin from /dev/null, stdout+stderr appended to logs/NAME.log, pid file written.
# The child writes its own PID before exec, so the PID is right even if setsid has to fork.
spawn() {
  local name=$1 log pidf tmp pid start deadline
  shift
  log=$LOG_DIR/$name.log
  pidf=$(pid_file "$name")
  tmp=$pidf.starting
  rm -f "$tmp" "$tmp.tmp"
  # keep logs bounded across many runs
  if [[ -f $log ]] && (($(stat -c %s "$log") > 50 * 1024 * 1024)); then mv -f "$log" "$log.1"; fi
  printf '\n===== %s start: %s\n' "$(date '+%F %T')" "$*" >>"$log"
  # shellcheck disable=SC2016  # $0/$@ belong to the inner shell
  setsid bash -c 'echo "$$" >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' "$tmp" "$@" \
    </dev/null >>"$log" 2>&1 9>&- &
  deadline=$(($(now_ms) + 10000))
  until [[ -s $tmp ]]; do
    (($(now_ms) < deadline)) || die "$name did not start (no pid written); see $log"
    sleep 0.01
  done
  pid=$(<"$tmp")
  rm -f "$tmp"
  start=
  read -r _ start < <(proc_stat "$pid") || true
  printf '%s %s\n' "$pid" "$start" >"$pidf"
}

# stop_daemons NAME...: SIGTERM all at once, wait until each is gone or a zombie, SIGKILL after
# $STOP_TIMEOUT s (default 30), remove the pid files. Only PIDs from our pid files are signalled.
stop_daemons() {
  local name pid deadline left timeout=${STOP_TIMEOUT:-30}
  local -A pids=()
  for name in "$@"; do
    if pid=$(daemon_pid "$name"); then
      say "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids[$name]=$pid
    fi
  done
  deadline=$(($(now_ms) + timeout * 1000))
  while ((${#pids[@]})); do
    left=0
    for name in "${!pids[@]}"; do
      if is_running "$name"; then left=1; else unset "pids[$name]"; fi
    done
    ((left)) || break
    if (($(now_ms) > deadline)); then
      for name in "${!pids[@]}"; do
        say "$name did not exit within ${timeout}s; sending SIGKILL"
        kill -KILL "${pids[$name]}" 2>/dev/null || true
      done
      deadline=$(($(now_ms) + 10000))
      timeout=10
    fi
    sleep 0.02
  done
  for name in "$@"; do rm -f "$(pid_file "$name")"; done
}

# ---------------------------------------------------------------------------------------------
# Probes (bash /dev/tcp: no curl/nc needed on a fresh machine)

port_open() { (: <>"/dev/tcp/$1/$2") 2>/dev/null; }

# http_code HOST PORT PATH: print the HTTP status code of a GET.
http_code() (
  exec 8<>"/dev/tcp/$1/$2" || exit 1
  printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$3" "$1" "$2" >&8
  read -r -t 5 _ code _ <&8 || exit 1
  echo "$code"
) 2>/dev/null

# tcp_cmd HOST PORT TEXT: send TEXT, print the whole reply (ZooKeeper four-letter words).
tcp_cmd() (
  exec 8<>"/dev/tcp/$1/$2" || exit 1
  printf '%s' "$3" >&8
  while IFS= read -r -t 1 line <&8 || [[ -n ${line:-} ]]; do
    printf '%s\n' "$line"
    line=
  done
) 2>/dev/null

# port_free_or_die PORT WHAT: refuse to start when someone else already listens on our port.
port_free_or_die() {
  if port_open 127.0.0.1 "$1"; then
    die "127.0.0.1:$1 ($2) is already in use by a process this script did not start"
  fi
}

# current_log NAME: this run's part of logs/NAME.log (after the last start marker), blank lines
# dropped (Ceph's stderr logging doubles newlines).
current_log() {
  local log=$LOG_DIR/$1.log
  [[ -f $log ]] || return 0
  awk '/^===== .* start: /{buf=""} NF{buf=buf $0 "\n"} END{printf "%s", buf}' "$log"
}

# show_log NAME: the last 40 lines of this run's log, to stderr.
show_log() {
  printf -- '----- last lines of %s\n' "$LOG_DIR/$1.log" >&2
  current_log "$1" | tail -n 40 >&2
  printf -- '-----\n' >&2
}

# wait_ready TIMEOUT_S WHAT CMD [ARG...]: poll CMD until it succeeds. Fails early when one of
# the daemons in the WATCH array has exited, or at the timeout; then prints their logs and exits.
# On failure the daemons in STARTED (started by this call) are stopped again.
wait_ready() {
  local timeout=$1 what=$2 deadline name
  shift 2
  deadline=$(($(now_ms) + timeout * 1000))
  while ! "$@" >/dev/null 2>&1; do
    for name in "${WATCH[@]}"; do
      is_running "$name" || fail_start "$name exited while waiting for $what"
    done
    (($(now_ms) < deadline)) || fail_start "$what not ready within ${timeout}s"
    sleep 0.1
  done
}

fail_start() {
  local name
  say "ERROR: $1"
  for name in "${WATCH[@]}"; do show_log "$name"; done
  # a script may define start_failure_hint to point at the cause (e.g. a model that failed to load)
  if declare -F start_failure_hint >/dev/null; then start_failure_hint >&2 || true; fi
  stop_started
  exit 1
}

stop_started() {
  local -a started=("${STARTED[@]}")
  STARTED=()
  if ((${#started[@]})); then
    say "stopping what this call started: ${started[*]}"
    STOP_TIMEOUT=10 stop_daemons "${started[@]}"
  fi
}

# status_line NAME ADDRESS [CHECK]: "name  up  address". Up = process alive and, when CHECK is
# given, CHECK passes: a port number (accepts connections) or a command. Returns 1 when down.
status_line() {
  local name=$1 addr=$2 check=${3:-} ok=1
  if is_running "$name"; then
    if [[ -z $check ]]; then
      ok=0
    elif [[ $check =~ ^[0-9]+$ ]]; then
      port_open 127.0.0.1 "$check" && ok=0
    else
      $check >/dev/null 2>&1 && ok=0
    fi
    if ((ok == 0)); then
      printf '%-10s %-5s %s\n' "$name" up "$addr"
      return 0
    fi
    printf '%-10s %-5s %s\n' "$name" down "$addr (process running, not answering)"
    return 1
  fi
  printf '%-10s %-5s %s\n' "$name" down "$addr"
  return 1
}

# main_dispatch VERB: common verb handling; each script defines do_install/do_start/do_stop/do_status.
main_dispatch() {
  local verb=${1:-}
  case $verb in
    install) take_lock; do_install ;;
    start) take_lock; do_start ;;
    stop) take_lock; do_stop ;;
    status) ensure_dirs; do_status ;;
    *)
      echo "usage: $0 install|start|stop|status" >&2
      exit 2
      ;;
  esac
}
