#!/usr/bin/env bash
# Fails when an #include in src/ points up the layer order of
# docs/ARCHITECTURE.md ("Layers"):
#
#   common <- pg, metrics, flags <- outbox <- kafka, sources <- pipeline <- cli
#
# A folder may include its own files and those of any lower layer; kafka and
# sources, on the same layer, do not include each other. consumer (the inbox)
# and devbroker stand apart: they may use the libraries below pipeline but
# are used by nothing. upkeep (outbox cleaner, slot monitor) stands apart
# too: it may use common, pg, metrics and outbox, and only cli uses it. Run from anywhere; prints each offending include.
# One awk pass over grep's output (a process per include line took a minute
# on a loaded machine).
set -euo pipefail
cd "$(dirname "$0")/.."

grep -rn --include='*.h' --include='*.cc' \
  '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' src |
  awk '
    BEGIN {
      # folder -> layer; "apart" folders list what they may include instead.
      n = split("common:0 pg:1 metrics:1 flags:1 outbox:2 kafka:3 sources:3 pipeline:4 cli:5", l, " ")
      for (i = 1; i <= n; i++) { split(l[i], kv, ":"); layer[kv[1]] = kv[2] + 0 }
      apart["consumer"] = " common pg metrics flags outbox kafka consumer "
      apart["devbroker"] = " common flags devbroker "
      apart["upkeep"] = " common pg metrics outbox upkeep "
      # apart folders that a layer may use, and which ones.
      users["upkeep"] = " cli "
      bad = 0
    }
    {
      # src/<from>/file:line:#include "<to>/..."
      split($0, parts, ":")
      file = parts[1]
      split(file, path, "/")
      from = path[2]
      text = substr($0, length(parts[1]) + length(parts[2]) + 3)
      if (!match(text, /"[^\/"]*\//)) next
      to = substr(text, RSTART + 1, RLENGTH - 2)
      if (to == from) next
      if (!(to in layer) && !(to in apart)) next   # absl/, gtest/, ...
      if ((to in users) && index(users[to], " " from " ")) next
      if (from in apart) {
        if (index(apart[from], " " to " ")) next
      } else if ((from in layer) && (to in layer) && layer[to] < layer[from]) {
        next
      }
      sub(/^[[:space:]]*/, "", text)
      print "upward include: " file ": " text
      bad = 1
    }
    END { exit bad }
  ' && rc=0 || rc=$?

if ((rc != 0)); then
  echo "check-layers: includes above point up the layer order (docs/ARCHITECTURE.md)" >&2
  exit 1
fi
echo "check-layers: no include in src/ points up the layer order"
