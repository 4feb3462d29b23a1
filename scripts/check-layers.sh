#!/usr/bin/env bash
# Fails when an #include in src/ points up the layer order of
# docs/ARCHITECTURE.md ("Layers"):
#
#   common <- pg, metrics, flags <- outbox <- kafka, sources <- pipeline <- cli
#
# A folder may include its own files and those of any lower layer; kafka and
# sources, on the same layer, do not include each other. consumer (the inbox)
# and devbroker stand apart: they may use the libraries below pipeline but
# are used by nothing. Run from anywhere; prints each offending include.
set -euo pipefail
cd "$(dirname "$0")/.."

# folder -> layer; "apart" folders list what they may include instead.
declare -A layer=([common]=0 [pg]=1 [metrics]=1 [flags]=1 [outbox]=2
                  [kafka]=3 [sources]=3 [pipeline]=4 [cli]=5)
declare -A apart=([consumer]="common pg metrics flags outbox kafka consumer"
                  [devbroker]="common flags devbroker")

bad=0
while IFS= read -r line; do
  file=${line%%:*}
  rest=${line#*:}
  from=$(cut -d/ -f2 <<<"$file")
  to=$(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^/"]*\)\/.*/\1/p' <<<"$rest")
  [[ -z "$to" || "$to" == "$from" ]] && continue
  # Not a project folder (absl/, gtest/, nlohmann/, ...).
  [[ -z "${layer[$to]:-}" && -z "${apart[$to]:-}" ]] && continue
  if [[ -n "${apart[$from]:-}" ]]; then
    [[ " ${apart[$from]} " == *" $to "* ]] && continue
  elif [[ -n "${layer[$from]:-}" && -n "${layer[$to]:-}" ]]; then
    (( ${layer[$to]:-99} < ${layer[$from]} )) && continue
  fi
  echo "upward include: $file: $(sed 's/^[[:space:]]*//' <<<"$rest")"
  bad=1
done < <(grep -rn --include='*.h' --include='*.cc' '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' src | sed 's/:[0-9]*:/:/')

if (( bad )); then
  echo "check-layers: includes above point up the layer order (docs/ARCHITECTURE.md)" >&2
  exit 1
fi
echo "check-layers: no include in src/ points up the layer order"
