# Shared by scripts/demo.sh and scripts/example-inbox.sh (source it, with
# `set -euo pipefail` and the repository root as the working directory):
# a throwaway PostgreSQL cluster and the dev broker or a real Apache
# Kafka, stopped and removed on exit together with every pid added to `pids`.
#
# PG_VERSION picks the server: 15 (the default) is Debian's; 16, 17 and 18
# come from scripts/fetch-postgres.sh (fetched once into .cache/postgres).
# The client tools (psql) stay Debian's 15, which talk to newer servers.

pg_version=${PG_VERSION:-15}
pgbin=$(scripts/fetch-postgres.sh "$pg_version")
pids=()

say() { printf '\033[1m== %s\033[0m\n' "$*"; }

# wait_for FILE PATTERN PID: until PATTERN is in FILE; fails (showing FILE)
# when PID exits first or after 30 s.
wait_for() {
  for _ in $(seq 300); do
    grep -q "$2" "$1" && return 0
    kill -0 "$3" 2>/dev/null || { cat "$1"; exit 1; }
    sleep 0.1
  done
  cat "$1"
  exit 1
}

_local_stack_cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  if [[ -n ${kafka_dir:-} ]]; then
    scripts/kafka-cluster.sh stop --dir "$kafka_dir" >/dev/null 2>&1
  fi
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/data" -m fast stop >/dev/null 2>&1
  rm -rf "$work"
}

# start_postgres NAME: initdb + start with wal_level=logical on a random
# port of 127.0.0.1; sets work (temp dir), port and pg_base (conninfo without
# dbname).
start_postgres() {
  work=$(mktemp -d "/tmp/outboxd-$1.XXXXXX")
  as_pg=()
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres "$work"
    as_pg=(runuser -u postgres --)
  fi
  trap _local_stack_cleanup EXIT
  port=$(( 20000 + RANDOM % 20000 ))
  "${as_pg[@]}" "$pgbin/initdb" -D "$work/data" -U postgres -A trust --no-sync >/dev/null
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/data" -w -l "$work/postgres.log" \
    -o "-c wal_level=logical -c port=$port -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories=$work -c fsync=off" start >/dev/null
  pg_base="host=127.0.0.1 port=$port user=postgres"
}

# start_devbroker BINARY [ARGS...]: runs the dev broker in the background and
# sets brokers to its bootstrap list.
start_devbroker() {
  local binary=$1
  shift
  mkfifo "$work/broker.out"
  "$binary" "$@" </dev/null >"$work/broker.out" 2>"$work/broker.log" &
  pids+=($!)
  exec 3<"$work/broker.out"
  local line
  read -r -t 30 line <&3
  brokers=${line#BOOTSTRAP=}
  echo "bootstrap servers: $brokers"
}

# start_apache_kafka PARTITIONS TOPIC...: a real single-node Apache Kafka
# (scripts/kafka-cluster.sh; the jars are fetched once) with auto-created
# topics of PARTITIONS partitions; creates TOPICs up front and sets brokers
# to its bootstrap list. Call after start_postgres (it lives in $work).
start_apache_kafka() {
  local partitions=$1 topic
  shift
  kafka_dir="$work/kafka"
  brokers=$(scripts/kafka-cluster.sh start --nodes 1 --dir "$kafka_dir" \
    --partitions "$partitions" --watch-pid $$)
  echo "bootstrap servers: $brokers"
  # A metadata request for a missing topic makes the broker create it.
  for topic in "$@"; do
    for _ in $(seq 100); do
      kcat -L -b "$brokers" -t "$topic" -m 5 2>/dev/null |
        grep -q "with $partitions partitions" && continue 2
      sleep 0.3
    done
    echo "topic $topic was not created" >&2
    exit 1
  done
}
