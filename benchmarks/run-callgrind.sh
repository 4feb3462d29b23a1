#!/usr/bin/env bash
# Instructions (callgrind Ir) per event of outboxd draining a backlog, for
# outbox table rows and for logical decoding messages: a repeatable figure
# to compare two commits of the Publisher (benchmarks/README.md,
# "Instructions per backlog event"; how it was first done:
# results/experiments/cpu-per-event.md).
#
#   benchmarks/run-callgrind.sh [--build-dir=DIR] [--events=N] [--reps=R]
#                               [--kinds=insert,message] [--no-build]
#                               [--out=DIR] [--tunables=GLIBC_TUNABLES]
#
# throughput_bench runs with --outboxd= a wrapper that starts its backlog
# outboxd (slot bench_backlog_<kind>) under `valgrind --tool=callgrind`
# (every thread, from the start to the exit on SIGTERM) and every other
# outboxd natively. The fixed cost (start, connect, metadata, idle polls,
# shutdown) is one run with --events=1 --batch=1; then
#   Ir per event = (whole-process Ir - fixed Ir) / N.
# With --reps=R the full run is repeated R times (the fixed run once) and
# the table gives the median and the spread. Besides the whole process it
# splits the Ir into outboxd's threads (main, where the Publisher runs; slot
# monitor; metrics server) and librdkafka's, the noisier part. Defaults:
# build/, 50000 events, 3 reps, both kinds: about 3 minutes.
#
# The counts are not exactly repeatable: how many events are in flight at
# once depends on timing (postgres and the dev broker run natively beside
# the serialised outboxd), and glibc malloc's work with it, most of all
# malloc_consolidate emptying the fastbins. So the measured outboxd runs
# with GLIBC_TUNABLES=glibc.malloc.mxfast=0 (no fastbins; --tunables= to
# change it, --tunables= with nothing for glibc's defaults): its own
# threads then vary by under 1 % from rep to rep instead of up to 3 % for
# rows, at the price of about 2 % more Ir per event. librdkafka's threads
# (polls, wakeups) stay noisier; compare medians, and the outboxd threads'
# column for the Publisher.
#
# Writes <out>/callgrind.{json,md} (default benchmarks/results/) and prints
# the table. Instruction counts do not depend on the machine's load, so
# there is no load guard; the load is recorded all the same.
source "$(dirname "$0")/lib.sh"

build_dir="$root/build"
events=50000
reps=3
kinds=insert,message
do_build=1
out="$results"
tunables=glibc.malloc.mxfast=0
for a in "$@"; do
  case $a in
    --build-dir=*) build_dir=$(realpath -m "${a#--build-dir=}") ;;
    --events=*) events=${a#--events=} ;;
    --reps=*) reps=${a#--reps=} ;;
    --kinds=*) kinds=${a#--kinds=} ;;
    --no-build) do_build="" ;;
    --out=*) out=$(realpath -m "${a#--out=}") ;;
    --tunables=*) tunables=${a#--tunables=} ;;
    -h | --help)
      sed -n '2,/^source/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "run-callgrind.sh: unknown argument $a (see --help)" >&2
      exit 2
      ;;
  esac
done
[[ $events =~ ^[0-9]+$ && $events -ge 2 ]] || {
  echo "run-callgrind.sh: --events must be a number >= 2" >&2
  exit 2
}
[[ $reps =~ ^[0-9]+$ && $reps -ge 1 ]] || {
  echo "run-callgrind.sh: --reps must be a number >= 1" >&2
  exit 2
}

if ! command -v valgrind >/dev/null 2>&1; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo=sudo
  echo "run-callgrind.sh: installing valgrind" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
    --no-install-recommends valgrind >&2 || {
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
      --no-install-recommends valgrind >&2
  }
fi

targets=(outboxd outbox-devbroker throughput_bench)
if [[ -n $do_build ]]; then
  "$root/scripts/install-deps.sh" >&2
  if [[ ! -f $build_dir/CMakeCache.txt ]]; then
    cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
  fi
  tflags=()
  for t in "${targets[@]}"; do tflags+=(--target "$t"); done
  cmake --build "$build_dir" -j "$(nproc)" "${tflags[@]}" >&2
fi
for t in outboxd throughput_bench; do
  [[ -x $build_dir/$t ]] || {
    echo "run-callgrind.sh: $build_dir/$t is missing (build it, or drop --no-build)" >&2
    exit 1
  }
done

# The commit measured: that of the build's own source tree (a --build-dir of
# another worktree measures that worktree).
src_dir=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build_dir/CMakeCache.txt" 2>/dev/null)
[[ -n $src_dir ]] || src_dir=$root

work=$(mktemp -d /tmp/outboxd-callgrind.XXXXXX)
# OUTBOXD_CALLGRIND_KEEP=1 keeps the callgrind files and logs.
if [[ -n ${OUTBOXD_CALLGRIND_KEEP:-} ]]; then
  echo "run-callgrind.sh: keeping $work" >&2
else
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work/cg" "$out"

# The wrapper throughput_bench starts instead of outboxd. CG_LABEL names the
# run (fixed, rep1, ...); the output file gets the kind from the slot.
cat >"$work/outboxd" <<EOF
#!/usr/bin/env bash
for a in "\$@"; do
  case \$a in
    --slot=bench_backlog_*)
      ${tunables:+GLIBC_TUNABLES=$tunables} exec valgrind --tool=callgrind --separate-threads=yes \\
        --callgrind-out-file="$work/cg/\$CG_LABEL.\${a#--slot=bench_backlog_}.%p" \\
        --log-file="$work/cg/\$CG_LABEL.\${a#--slot=bench_backlog_}.valgrind.log" \\
        "$build_dir/outboxd" "\$@"
      ;;
  esac
done
exec "$build_dir/outboxd" "\$@"
EOF
chmod +x "$work/outboxd"

load_before=$(bench_load3)
start=$(date +%s)
run() {  # label, events, batch
  local label=$1 n=$2 batch=$3 t0
  t0=$(date +%s)
  echo "run-callgrind.sh: $label: $n events ($kinds)" >&2
  if ! CG_LABEL=$label "$build_dir/throughput_bench" --outboxd="$work/outboxd" \
    --events="$n" --batch="$batch" --kinds="$kinds" --out="$work/$label" \
    --work_dir="$work/$label-logs" >"$work/$label.out" 2>"$work/$label.err"; then
    echo "run-callgrind.sh: $label: throughput_bench failed; its stderr:" >&2
    tail -30 "$work/$label.err" >&2
    exit 1
  fi
  echo "run-callgrind.sh: $label: $(($(date +%s) - t0)) s" >&2
}
mkdir -p "$work/fixed" "$work/fixed-logs"
run fixed 1 1
for ((r = 1; r <= reps; r++)); do
  mkdir -p "$work/rep$r" "$work/rep$r-logs"
  run "rep$r" "$events" 100
done
elapsed=$(($(date +%s) - start))

python3 - "$work/cg" "$out" "$events" "$reps" "$kinds" "$elapsed" \
  "$load_before" "$(bench_load3)" "$src_dir" "$build_dir" "$tunables" <<'EOF'
import glob, json, os, re, statistics, subprocess, sys, datetime

(cg, out, events, reps, kinds, elapsed, load_before, load_after, root,
 build_dir, tunables) = sys.argv[1:]
events, reps, elapsed = int(events), int(reps), int(elapsed)
kinds = kinds.split(",")
# outboxd's own threads: the main thread (the Publisher runs there) and
# those it starts with std::thread (slot monitor, metrics server). The others
# are librdkafka's (started with pthreads through its thrd_create; Debian's
# librdkafka has no symbols to name them by).
OWN_THREAD = re.compile(r"^(main|std::thread::_State_impl<.*)$")
NAME = re.compile(rb"^c?fn=\((\d+)\) (.+)$", re.M)
FN = re.compile(rb"^fn=\((\d+)\)", re.M)

def counts(label, kind):
    """Whole-process Ir, and the Ir of outboxd's threads and librdkafka's.

    --separate-threads=yes writes one file per thread (<name>-01, -02, ...);
    a function's name is given once per dump, in the first file that
    mentions it, so the names are collected over all the files first."""
    files = sorted(f for f in glob.glob(f"{cg}/{label}.{kind}.*-*")
                   if not f.endswith(".log"))
    if not files:
        sys.exit(f"run-callgrind.sh: no callgrind output for {label} {kind}")
    datas = [open(f, "rb").read() for f in files]
    own_ids = {m.group(1) for d in datas for m in NAME.finditer(d)
               if OWN_THREAD.match(m.group(2).decode(errors="replace"))}
    total = own = 0
    for f, data in zip(files, datas):
        m = re.search(rb"^(?:totals|summary): (\d+)", data, re.M)
        if not m:
            sys.exit(f"run-callgrind.sh: no totals in {f}")
        ir = int(m.group(1))
        total += ir
        if any(m.group(1) in own_ids for m in FN.finditer(data)):
            own += ir
    return {"total": total, "outboxd_threads": own,
            "librdkafka_threads": total - own, "threads": len(files)}

def git(*a):
    return subprocess.run(["git", "-C", root, *a], capture_output=True,
                          text=True).stdout.strip()

def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True,
                          text=True).stdout.strip()

runs = {}
for kind in kinds:
    fixed = counts("fixed", kind)
    reps_ = [counts(f"rep{r}", kind) for r in range(1, reps + 1)]
    per = {}
    for part in ("total", "outboxd_threads", "librdkafka_threads"):
        vals = [(x[part] - fixed[part]) / events for x in reps_]
        med = statistics.median(vals)
        per[part] = {
            "median": med, "min": min(vals), "max": max(vals),
            "spread_pct": 100 * (max(vals) - min(vals)) / med if med else 0,
            "reps": vals}
    runs[kind] = {"fixed_ir": fixed, "reps_ir": reps_, "ir_per_event": per}

commit = git("rev-parse", "--short", "HEAD")
dirty = git("status", "--porcelain", "--", "src") != ""
doc = {
    "benchmark": "callgrind",
    "commit": commit + (" (src modified)" if dirty else ""),
    "date": datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"),
    "machine": {
        "nproc": os.cpu_count(),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'"),
        "kernel": sh("uname -sr"),
        "valgrind": sh("valgrind --version"),
        "librdkafka": sh("pkg-config --modversion rdkafka"),
        "compiler": sh(f"$(grep -m1 '^CMAKE_CXX_COMPILER:' {build_dir}/CMakeCache.txt | cut -d= -f2) --version | head -1"),
        "load_before": [float(x) for x in load_before.split()],
        "load_after": [float(x) for x in load_after.split()],
    },
    "setup": {
        "events": events, "batch": 100, "reps": reps,
        "how": "throughput_bench --kinds=<kind> --events=N: its backlog "
               "outboxd under valgrind --tool=callgrind (all threads, start "
               "to exit on SIGTERM); fixed = the same with --events=1 "
               "--batch=1; Ir per event = (Ir - fixed Ir) / N",
        "glibc_tunables": tunables,
        "seconds": elapsed,
    },
    "runs": runs,
}
with open(f"{out}/callgrind.json", "w") as fh:
    json.dump(doc, fh, indent=2)
    fh.write("\n")

kname = {"insert": "table rows", "message": "logical messages"}
def n(x):
    return f"{x:,.0f}"
lines = [
    f"# Instructions per backlog event (callgrind Ir)",
    "",
    f"Commit {doc['commit']}, {doc['date']}, {events:,} events per kind "
    f"(100 per transaction), {reps} rep(s), fixed cost from a run with 1 "
    f"event; GLIBC_TUNABLES={tunables or '(none)'}; "
    f"{doc['machine']['valgrind']}, librdkafka "
    f"{doc['machine']['librdkafka']}, {doc['machine']['cpu']} "
    f"({doc['machine']['nproc']} cores, {doc['machine']['kernel']}). "
    f"Made by `benchmarks/run-callgrind.sh` in {elapsed} s.",
    "",
    "| kind | total Ir | fixed Ir | Ir per event | spread | outboxd threads Ir/event | spread | librdkafka threads Ir/event |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]
for kind, r in runs.items():
    per = r["ir_per_event"]
    totals = sorted(x["total"] for x in r["reps_ir"])
    def sp(part):
        return f"{per[part]['spread_pct']:.1f} %" if reps > 1 else "-"
    lines.append(
        f"| {kname.get(kind, kind)} | {n(statistics.median(totals))} | "
        f"{n(r['fixed_ir']['total'])} | {n(per['total']['median'])} | "
        f"{sp('total')} | {n(per['outboxd_threads']['median'])} | "
        f"{sp('outboxd_threads')} | "
        f"{n(per['librdkafka_threads']['median'])} |")
lines += [
    "",
    "Ir per event = (whole-process Ir - fixed Ir) / events; with several "
    "reps the median, and the spread is (max - min) / median. "
    "\"outboxd threads\" are the main thread (where the Publisher runs) "
    "and the threads outboxd starts (slot monitor, metrics server); "
    "\"librdkafka threads\" are all the others.",
]
if reps > 1:
    lines += ["", "Per rep (Ir per event, whole process / outboxd threads):", ""]
    for kind, r in runs.items():
        per = r["ir_per_event"]
        lines.append(f"- {kname.get(kind, kind)}: " + ", ".join(
            f"{n(a)} / {n(b)}" for a, b in zip(per["total"]["reps"],
                                               per["outboxd_threads"]["reps"])))
md = "\n".join(lines) + "\n"
with open(f"{out}/callgrind.md", "w") as fh:
    fh.write(md)

print("kind, total Ir, fixed Ir, Ir per event, spread %, "
      "outboxd threads Ir per event, spread %")
for kind, r in runs.items():
    totals = sorted(x["total"] for x in r["reps_ir"])
    per = r["ir_per_event"]
    print(f"{kind}, {statistics.median(totals):.0f}, {r['fixed_ir']['total']}, "
          f"{per['total']['median']:.0f}, {per['total']['spread_pct']:.2f}, "
          f"{per['outboxd_threads']['median']:.0f}, "
          f"{per['outboxd_threads']['spread_pct']:.2f}")
print(f"(written to {out}/callgrind.md and callgrind.json)", file=sys.stderr)
EOF
