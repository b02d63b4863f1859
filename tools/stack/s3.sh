#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Local S3: Ceph RADOS Gateway (one monitor, one BlueStore OSD, radosgw) on loopback.
#   install | start | stop | status
#   monitor v1:127.0.0.1:26789, S3 http://127.0.0.1:27480, credentials in $STACK_DIR/s3.env
set -euo pipefail
COMPONENT=s3
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MON_PORT=26789
S3_PORT=27480
S3_ENDPOINT=127.0.0.1:$S3_PORT
S3_USER=taxonstream
# Content-addressed originals and derivatives: never listed, so their bucket needs no index. On this
# gateway an indexless bucket halves a 7 KB PUT's cost (1.6 -> 0.9 ms of Ceph CPU).
BLOB_BUCKET=taxonstream-blobs
S3_ENV=$STACK_DIR/s3.env
CEPH_DIR=$DATA_DIR/s3
CONF=$CEPH_DIR/ceph.conf
# Sparse BlueStore block file; it must live outside the OSD directory.
BLOCK_FILE=$CEPH_DIR/osd-block
BLOCK_SIZE_GB=${TAXONSTREAM_S3_SIZE_GB:-16}
START_TIMEOUT=${TAXONSTREAM_S3_START_TIMEOUT:-90}
DAEMONS=(ceph-mon ceph-osd radosgw)

# The Ceph CLIs are Python programs of the system interpreter: keep a caller's venv out.
unset PYTHONPATH PYTHONHOME

installed() { command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null &&
  command -v radosgw >/dev/null && command -v radosgw-admin >/dev/null && command -v ceph >/dev/null; }

do_install() {
  need_pkgs ceph-mon ceph-osd radosgw ceph-common
  ensure_dirs
}

ceph_cli() { ceph -c "$CONF" --connect-timeout 30 "$@"; }

# ceph_retry ARGS...: a monitor that has just won its election may reject a first command
# ("handle_command on fsid 0000... != ..."); the commands used here are idempotent, so retry.
ceph_retry() {
  local _
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    ceph_cli "$@" 2>>"$LOG_DIR/ceph-cli.log" && return 0
    sleep 0.3
  done
  return 1
}

write_conf() {
  local fsid=$1
  mkdir -p "$CEPH_DIR/run" "$CEPH_DIR/crash"
  cat >"$CONF" <<EOF
# written by tools/stack/s3.sh on every start; the cluster id lives in $CEPH_DIR/fsid
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$MON_PORT
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr2 = false
ms bind ipv6 = false
ms bind port min = 26800
ms bind port max = 26899
# one machine, trusted loopback: no cephx between daemons (S3 signatures are still checked)
auth cluster required = none
auth service required = none
auth client required = none
keyring = $CEPH_DIR/keyring
run dir = $CEPH_DIR/run
pid file = $CEPH_DIR/run/\$name.pid
crash dir = $CEPH_DIR/crash
# logs go to stderr, which the start script sends to logs/<daemon>.log
log to file = false
log to stderr = true
err to stderr = true
mon cluster log to file = false
# RocksDB prints its whole option set at every open
debug rocksdb = 0/0
# Debug output gathered in memory costs CPU on every request even when nothing is printed: at the default
# levels (1/5) a 7 KB PUT cost 2.7 ms of Ceph CPU on this machine.
debug rgw = 0/0
debug osd = 0/0
debug bluestore = 0/0
debug bluefs = 0/0
debug bdev = 0/0
debug ms = 0/0
debug objecter = 0/0
debug rados = 0/0
debug auth = 0/0
debug monc = 0/0
debug filestore = 0/0
debug journal = 0/0
debug mon = 0/0
debug paxos = 0/0
# one OSD: single replicas, place copies across OSDs not hosts, few placement groups
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon allow pool size one = true
mon allow pool delete = true
# cluster creation 11.8 s -> 1.8 s, first put 4.5 s -> 0.9 s
paxos propose interval = 0.05
# developer disks are often fuller than Ceph's 30 % / 5 % comfort levels
mon data avail warn = 2
mon data avail crit = 1
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false

[mon]
mon data = $CEPH_DIR/mon

[osd]
osd data = $CEPH_DIR/osd
osd objectstore = bluestore
bluestore block path = $BLOCK_FILE
bluestore block create = true
bluestore block size = $((BLOCK_SIZE_GB * 1024 * 1024 * 1024))
bluestore fsck on mkfs = false
# compact the BlueFS log at 1 MB instead of 16 MB: every mount replays it (twice)
bluefs log compact min size = 1048576
# halve BlueStore start time
bdev aio poll ms = 10
osd op num shards = 1
osd class update on start = false
# the OSD is placed once, at creation
osd crush update on start = false
osd memory target = 1073741824

[client.rgw]
rgw data = $CEPH_DIR/rgw
# tcp_nodelay=1: without it every GET waits on the client's delayed ACK (measured 43.5 ms per 30 KB GET, 1.6 ms with it).
rgw frontends = beast endpoint=127.0.0.1:$S3_PORT tcp_nodelay=1
rgw enable apis = s3
rgw thread pool size = 64
# Deleted objects' data (the tails of anything over 4 MB: index and registry snapshots) is freed by the
# gateway's garbage collector, by default 2 h after the delete and then hourly: a 30k-record soak after a
# day of benchmarks filled the 16 GB OSD to 89 % with freed-but-kept snapshot generations and every request
# timed out. Free them within ~5 minutes instead.
rgw gc obj min wait = 300
rgw gc processor period = 300
EOF
}

spawn_daemons() {
  local d
  for d in "${DAEMONS[@]}"; do
    if ! is_running "$d"; then
      case $d in
        ceph-mon) port_free_or_die "$MON_PORT" ceph-mon; spawn ceph-mon ceph-mon -f -c "$CONF" -i a ;;
        ceph-osd) spawn ceph-osd ceph-osd -f -c "$CONF" -i 0 ;;
        radosgw) port_free_or_die "$S3_PORT" radosgw; spawn radosgw radosgw -f -c "$CONF" -n client.rgw ;;
      esac
      STARTED+=("$d")
    fi
  done
}

# First start only: monitor store, OSD 0 on a sparse BlueStore file, placed in the CRUSH map.
create_cluster() {
  local fsid osd_uuid id
  say "creating the Ceph cluster in $CEPH_DIR"
  rm -rf "$CEPH_DIR" # a half-made cluster from an interrupted first start
  # Keys of an earlier cluster (its data deleted by hand) name a user this one lacks: every signed request
  # would fail until the start times out. A new cluster gets a new user and keys.
  rm -f "$S3_ENV"
  mkdir -p "$CEPH_DIR/mon" "$CEPH_DIR/osd" "$CEPH_DIR/rgw"
  fsid=$(</proc/sys/kernel/random/uuid)
  echo "$fsid" >"$CEPH_DIR/fsid"
  write_conf "$fsid"
  # ceph-mon --mkfs wants a mon. key even though authentication is off
  ceph-authtool --create-keyring "$CEPH_DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$MON_PORT]" "$CEPH_DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" --keyring "$CEPH_DIR/keyring" \
    >>"$LOG_DIR/ceph-mon.log" 2>&1 || { show_log ceph-mon; die "ceph-mon --mkfs failed"; }
  port_free_or_die "$MON_PORT" ceph-mon
  spawn ceph-mon ceph-mon -f -c "$CONF" -i a
  STARTED+=(ceph-mon)
  osd_uuid=$(</proc/sys/kernel/random/uuid)
  # "osd new" with the same uuid returns the same id, so a retry cannot create a second OSD
  id=$(ceph_retry osd new "$osd_uuid") || fail_start "ceph osd new failed (see $LOG_DIR/ceph-cli.log)"
  [[ $id == 0 ]] || fail_start "expected OSD id 0, got '$id'"
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$LOG_DIR/ceph-osd.log" 2>&1 ||
    fail_start "ceph-osd --mkfs failed (see $LOG_DIR/ceph-osd.log)"
  ceph_retry osd crush add osd.0 1.0 root=default >/dev/null || fail_start "ceph osd crush add failed"
  touch "$CEPH_DIR/.created"
}

# Once: the S3 user, with a random key pair written to s3.env (mode 600).
ensure_user() {
  local keys access secret
  [[ -s $S3_ENV ]] && return 0
  keys=$("$PYTHON" -c '
import secrets, string
a = "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(20))
s = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
print(a, s)')
  read -r access secret <<<"$keys"
  if radosgw-admin -c "$CONF" user info --uid="$S3_USER" >/dev/null 2>&1; then
    # cluster kept, s3.env lost: give the existing user a fresh key
    radosgw-admin -c "$CONF" key create --uid="$S3_USER" --key-type=s3 \
      --access-key="$access" --secret-key="$secret" >/dev/null || fail_start "radosgw-admin key create failed"
  else
    radosgw-admin -c "$CONF" user create --uid="$S3_USER" --display-name="taxonstream local stack" \
      --access-key="$access" --secret-key="$secret" >/dev/null || fail_start "radosgw-admin user create failed"
  fi
  (
    umask 077
    printf 'TAXONSTREAM_S3_ENDPOINT=%s\nTAXONSTREAM_S3_ACCESS_KEY=%s\nTAXONSTREAM_S3_SECRET_KEY=%s\n' \
      "$S3_ENDPOINT" "$access" "$secret" >"$S3_ENV.tmp"
  )
  mv -f "$S3_ENV.tmp" "$S3_ENV"
  say "S3 user '$S3_USER' created; credentials in $S3_ENV"
}

# Once: the blob bucket, on an indexless placement target, and its name in s3.env.
ensure_blob_bucket() {
  if [[ -f $CEPH_DIR/.blob-bucket ]]; then # made already; s3.env may have been written anew since
    grep -q '^TAXONSTREAM_S3_BLOB_BUCKET=' "$S3_ENV" || printf 'TAXONSTREAM_S3_BLOB_BUCKET=%s\n' "$BLOB_BUCKET" >>"$S3_ENV"
    return 0
  fi
  radosgw-admin -c "$CONF" zonegroup placement add --rgw-zonegroup default --placement-id indexless \
    >/dev/null 2>>"$LOG_DIR/ceph-cli.log" || fail_start "radosgw-admin zonegroup placement add failed"
  radosgw-admin -c "$CONF" zone placement add --rgw-zone default --placement-id indexless \
    --data-pool default.rgw.buckets.data --index-pool default.rgw.buckets.index \
    --data-extra-pool default.rgw.buckets.non-ec --placement-index-type indexless \
    >/dev/null 2>>"$LOG_DIR/ceph-cli.log" || fail_start "radosgw-admin zone placement add failed"
  # the gateway reads placement targets at start
  stop_daemons radosgw
  spawn radosgw radosgw -f -c "$CONF" -n client.rgw
  wait_ready "$START_TIMEOUT" "radosgw listening on $S3_ENDPOINT" port_open 127.0.0.1 "$S3_PORT"
  wait_ready "$START_TIMEOUT" "S3 (signed list-buckets on $S3_ENDPOINT)" probe_s3 10
  # A bucket takes its owner's default placement when it is made: indexless for this one bucket only.
  radosgw-admin -c "$CONF" user modify --uid="$S3_USER" --placement-id indexless >/dev/null ||
    fail_start "radosgw-admin user modify failed"
  (set -a && source "$S3_ENV" && "$PYTHON" - "$BLOB_BUCKET" <<'PY'
import os, sys
from minio import Minio
client = Minio(os.environ["TAXONSTREAM_S3_ENDPOINT"], access_key=os.environ["TAXONSTREAM_S3_ACCESS_KEY"],
               secret_key=os.environ["TAXONSTREAM_S3_SECRET_KEY"], secure=False)
if not client.bucket_exists(sys.argv[1]):
    client.make_bucket(sys.argv[1])
PY
  ) || fail_start "could not create the blob bucket $BLOB_BUCKET"
  radosgw-admin -c "$CONF" user modify --uid="$S3_USER" --placement-id default-placement >/dev/null ||
    fail_start "radosgw-admin user modify failed"
  grep -q '^TAXONSTREAM_S3_BLOB_BUCKET=' "$S3_ENV" || printf 'TAXONSTREAM_S3_BLOB_BUCKET=%s\n' "$BLOB_BUCKET" >>"$S3_ENV"
  touch "$CEPH_DIR/.blob-bucket"
  say "blob bucket '$BLOB_BUCKET' (indexless) ready"
}

# Readiness: an authenticated S3 request (list buckets) with the s3.env keys succeeds.
probe_s3() {
  # shellcheck disable=SC1090
  (set -a && source "$S3_ENV" && "$PYTHON" - "$1" <<'PY'
import os, sys, time
from minio import Minio
deadline = time.monotonic() + float(sys.argv[1])
client = Minio(os.environ["TAXONSTREAM_S3_ENDPOINT"], access_key=os.environ["TAXONSTREAM_S3_ACCESS_KEY"],
               secret_key=os.environ["TAXONSTREAM_S3_SECRET_KEY"], secure=False)
last = None
while time.monotonic() < deadline:
    try:
        client.list_buckets()
        sys.exit(0)
    except Exception as exc:  # noqa: BLE001 - not ready yet
        last = exc
        time.sleep(0.1)
print(f"s3 not ready: {last!r}", file=sys.stderr)
sys.exit(1)
PY
  )
}

do_start() {
  local t0 running=0 d
  t0=$(now_ms)
  installed || do_install
  ensure_dirs
  require_python
  for d in "${DAEMONS[@]}"; do is_running "$d" && running=$((running + 1)); done
  # refuse early, before anything is started, if a stranger holds one of our ports
  is_running ceph-mon || port_free_or_die "$MON_PORT" ceph-mon
  is_running radosgw || port_free_or_die "$S3_PORT" radosgw
  WATCH=("${DAEMONS[@]}")
  if [[ ! -f $CEPH_DIR/.created ]]; then
    ((running == 0)) || die "Ceph daemons run but $CEPH_DIR/.created is missing; run '$0 stop' first"
    WATCH=(ceph-mon)
    create_cluster
    WATCH=("${DAEMONS[@]}")
  else
    write_conf "$(<"$CEPH_DIR/fsid")"
  fi
  # On a restart all three start together: the OSD and the gateway wait for the monitor.
  spawn_daemons
  wait_ready "$START_TIMEOUT" "radosgw listening on $S3_ENDPOINT" port_open 127.0.0.1 "$S3_PORT"
  ensure_user
  wait_ready "$START_TIMEOUT" "S3 (signed list-buckets on $S3_ENDPOINT)" probe_s3 10
  ensure_blob_bucket
  if ((${#STARTED[@]})); then
    say "ready: S3 http://$S3_ENDPOINT, credentials in $S3_ENV ($(($(now_ms) - t0)) ms)"
  else
    say "already running: S3 http://$S3_ENDPOINT"
  fi
}

do_stop() {
  # One at a time, gateway first: a gateway whose OSD is gone hangs in shutdown (SIGKILL after
  # 30 s); in this order each exits in ~0.1 s.
  stop_daemons radosgw
  stop_daemons ceph-osd
  stop_daemons ceph-mon
}

do_status() {
  local rc=0
  status_line ceph-mon "127.0.0.1:$MON_PORT" "$MON_PORT" || rc=1
  status_line ceph-osd "osd.0" || rc=1
  status_line radosgw "$S3_ENDPOINT" "$S3_PORT" || rc=1
  return $rc
}

main_dispatch "$@"
