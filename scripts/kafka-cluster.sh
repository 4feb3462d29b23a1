#!/usr/bin/env bash
# A throwaway Apache Kafka cluster on 127.0.0.1 (KRaft, combined
# broker+controller nodes) for tests, benchmarks and the demo.
#
#   scripts/kafka-cluster.sh start --nodes 1|3 --dir DIR [--partitions N]
#                                  [--no-auto-create] [--watch-pid PID]
#       formats and starts the nodes on free ports, waits until every node
#       is ready, prints the bootstrap list (one line) and exits; the nodes
#       keep running. DIR must not exist or be empty. With --watch-pid the
#       cluster stops itself once PID is gone (a crashed test leaves no JVM).
#   scripts/kafka-cluster.sh stop --dir DIR
#       SIGKILLs the nodes and removes DIR.
#   scripts/kafka-cluster.sh kill-node --dir DIR --node I      (SIGKILL)
#   scripts/kafka-cluster.sh restart-node --dir DIR --node I   (waits ready)
#
# 3 nodes: replication factor 3 and min.insync.replicas=2 for every topic,
# the offsets and transaction-state topics included. 1 node: all 1.
# KAFKA_HEAP (default 512m) and KAFKA_JVM_OPTS tune the JVMs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "kafka-cluster: $*" >&2; exit 1; }

cmd=${1:-}
[[ -n $cmd ]] || die "usage: $0 start|stop|kill-node|restart-node --dir DIR ..."
shift
nodes=1 dir="" partitions=1 auto_create=true node="" watch_pid=""
while (($#)); do
  case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --partitions) partitions=$2; shift 2 ;;
    --no-auto-create) auto_create=false; shift ;;
    --node) node=$2; shift 2 ;;
    --watch-pid) watch_pid=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done
[[ -n $dir ]] || die "--dir is required"

# node_pid I: the pid of node I if it is running (and really is that node).
node_pid() {
  local f="$dir/node-$1/pid" pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/node-$1/server.properties"
  echo "$pid"
}

kill_node() {
  local pid
  if pid=$(node_pid "$1"); then
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  fi
  rm -f "$dir/node-$1/pid"
}

# launch_node I: starts node I in the background (storage already formatted).
launch_node() {
  local n="$dir/node-$1" libs
  libs=$(<"$dir/libs")
  # wait_ready looks only at what this run logs (a restart appends).
  touch "$n/server.log"
  wc -l <"$n/server.log" >"$n/log-start"
  date +%s.%N >"$n/launched"
  # setsid: the node outlives the shell that started it, and a ^C to the
  # caller's terminal does not reach it (stop does).
  setsid java -Xms128m -Xmx"${KAFKA_HEAP:-512m}" -XX:+UseSerialGC \
    -XX:TieredStopAtLevel=1 -Xss512k -Djava.awt.headless=true \
    ${KAFKA_JVM_OPTS:-} \
    -Dlog4j2.configurationFile="$root/tests/kafka/log4j2.properties" \
    -Dkafka.logs.dir="$n" -cp "$libs/*" kafka.Kafka "$n/server.properties" \
    </dev/null >>"$n/server.log" 2>&1 &
  echo $! >"$n/pid"
}

# wait_ready I: until node I logs that it started (it is unfenced and
# serves clients by then); fails with the log's tail if it exits or after
# KAFKA_START_TIMEOUT (120) seconds.
wait_ready() {
  local n="$dir/node-$1" pid from deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120}))
  pid=$(<"$n/pid")
  from=$(($(<"$n/log-start") + 1))
  until tail -n "+$from" "$n/server.log" | grep -q "Kafka Server started"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$n/server.log" >&2
      die "node $1 exited during startup (log: $n/server.log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$n/server.log" >&2
      die "node $1 not ready after ${KAFKA_START_TIMEOUT:-120} s (log: $n/server.log)"
    fi
    sleep 0.1
  done
  echo "kafka-cluster: node $1 ready $(python3 -c 'import sys, time
print(f"{time.time() - float(sys.argv[1]):.1f}")' "$(<"$n/launched")") s after its JVM started" >&2
}

case $cmd in
start)
  [[ $nodes == 1 || $nodes == 3 ]] || die "--nodes must be 1 or 3"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [[ -z $(ls -A "$dir") ]] || die "$dir is not empty"
  "$root/scripts/fetch-kafka.sh" >"$dir/libs"
  libs=$(<"$dir/libs")

  # Two free ports per node (client, controller), all distinct: bind them
  # all at once, then release.
  read -r -a ports <<<"$(python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' $((2 * nodes)))"
  # A cluster id as Kafka makes them: 16 random bytes, base64url, no
  # padding, not starting with '-'.
  cluster_id=$(python3 -c '
import base64, os
while True:
    i = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    if not i.startswith("-"): print(i); break')

  if ((nodes == 3)); then rf=3 min_isr=2; else rf=1 min_isr=1; fi
  voters="" bootstrap="" format_pids=()
  for ((i = 0; i < nodes; i++)); do
    voters+="${voters:+,}$i@127.0.0.1:${ports[2 * i + 1]}"
    bootstrap+="${bootstrap:+,}127.0.0.1:${ports[2 * i]}"
  done

  for ((i = 0; i < nodes; i++)); do
    n="$dir/node-$i"
    mkdir -p "$n/data"
    if ((nodes == 1)); then
      quorum="controller.quorum.bootstrap.servers=127.0.0.1:${ports[1]}"
    else
      quorum="controller.quorum.voters=$voters"
    fi
    cat >"$n/server.properties" <<PROPS
process.roles=broker,controller
node.id=$i
listeners=PLAINTEXT://127.0.0.1:${ports[2 * i]},CONTROLLER://127.0.0.1:${ports[2 * i + 1]}
advertised.listeners=PLAINTEXT://127.0.0.1:${ports[2 * i]}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
$quorum
log.dirs=$n/data
num.partitions=$partitions
auto.create.topics.enable=$auto_create
default.replication.factor=$rf
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.cleaner.threads=1
PROPS
    standalone=()
    ((nodes == 1)) && standalone=(--standalone)
    # The nodes format in parallel (a JVM each).
    java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Dlog4j2.configurationFile="$root/tests/kafka/log4j2.properties" \
      -cp "$libs/*" kafka.tools.StorageTool format --cluster-id "$cluster_id" \
      --config "$n/server.properties" "${standalone[@]}" >"$n/format.log" 2>&1 &
    format_pids+=($!)
  done
  for ((i = 0; i < nodes; i++)); do
    wait "${format_pids[i]}" ||
      { cat "$dir/node-$i/format.log" >&2; die "formatting node $i failed"; }
  done
  echo "$bootstrap" >"$dir/bootstrap"
  echo "$nodes" >"$dir/nodes"

  for ((i = 0; i < nodes; i++)); do launch_node "$i"; done
  for ((i = 0; i < nodes; i++)); do
    wait_ready "$i" || { "$0" stop --dir "$dir" >/dev/null 2>&1; exit 1; }
  done

  if [[ -n $watch_pid ]]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -d $2 ]]; do sleep 1; done
      [[ -d $2 ]] && exec "$3" stop --dir "$2"' _ "$watch_pid" "$dir" "$root/scripts/kafka-cluster.sh" \
      </dev/null >/dev/null 2>&1 &
  fi
  echo "$bootstrap"
  ;;
stop)
  [[ -d $dir ]] || exit 0
  dir=$(cd "$dir" && pwd)
  for n in "$dir"/node-*; do
    [[ -d $n ]] && kill_node "${n##*-}"
  done
  rm -rf "$dir"
  ;;
kill-node)
  [[ -n $node && -d $dir/node-$node ]] || die "no node '$node' in $dir"
  dir=$(cd "$dir" && pwd)
  kill_node "$node"
  ;;
restart-node)
  [[ -n $node && -d $dir/node-$node ]] || die "no node '$node' in $dir"
  dir=$(cd "$dir" && pwd)
  kill_node "$node"
  launch_node "$node"
  wait_ready "$node"
  ;;
*) die "unknown command $cmd" ;;
esac
