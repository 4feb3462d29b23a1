#!/usr/bin/env bash
# Commit subjects say what changed in at most 72 characters; the why and
# the figures go in the body (ctest commits_check, label lint). Checks the
# commits after the first one this rule applied to; a clone without that
# history (a shallow CI checkout, a tarball) has nothing to check.
set -euo pipefail
cd "$(dirname "$0")/.."

# The last commit before the rule.
base=20b52869c333f60a3959928fd209a97d13e5b609
max=72

if ! git rev-parse --git-dir >/dev/null 2>&1 ||
   ! git cat-file -e "$base^{commit}" 2>/dev/null; then
  echo "check-commits: no history to check"
  exit 0
fi
bad=0
while IFS= read -r line; do
  hash=${line%% *}
  subject=${line#* }
  if (( ${#subject} > max )); then
    echo "check-commits: $hash: subject of ${#subject} characters" \
      "(at most $max): $subject" >&2
    bad=1
  fi
done < <(git log --format='%h %s' "$base..HEAD")
exit "$bad"
