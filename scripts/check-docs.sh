#!/usr/bin/env bash
# Keeps the user documentation honest (ctest docs_check, label lint):
#   - README.md is a front door of at most 400 lines; depth goes to docs/;
#   - README.md, docs/*.md and benchmarks/README.md speak of the product,
#     never of issue numbers ("issue 12", "issues #3", "(#12)");
#   - every benchmark table in README.md and docs/benchmarks.md is what
#     benchmarks/render-tables.py generates from benchmarks/results/.
# Run from anywhere; prints each problem, exits 1 if there is one.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
max_lines=400

lines=$(wc -l < README.md)
if (( lines > max_lines )); then
  echo "check-docs: README.md has $lines lines, at most $max_lines:" \
    "move the depth into docs/" >&2
  status=1
fi

# Issue numbers in prose. Link targets ("](file.md#3-decoder)") are anchors,
# not issue numbers, so they are removed before matching.
docs=(README.md docs/*.md benchmarks/README.md)
for f in "${docs[@]}"; do
  if hits=$(sed -E 's/\]\([^)]*\)/]()/g' "$f" |
      grep -nE '[Ii]ssues? #?[0-9]+|(^|[^[:alnum:]&/_-])#[0-9]+\b'); then
    while IFS= read -r h; do
      echo "check-docs: $f:${h%%:*}: names an issue number:" \
        "${h#*:}" >&2
    done <<< "$hits"
    status=1
  fi
done

if ! python3 benchmarks/render-tables.py --check >&2; then
  echo "check-docs: benchmark tables are stale or broken: run" \
    "benchmarks/render-tables.py" >&2
  status=1
fi

exit $status
