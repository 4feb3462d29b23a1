#!/usr/bin/env bash
# Checks that every tracked C++ file (*.h, *.cc) is clang-format clean under
# the repository's .clang-format (Google style). Exits 0 when all are clean,
# 1 listing the files that are not, 2 when clang-format is missing.
#
#   scripts/check-format.sh            check every tracked *.h / *.cc
#   scripts/check-format.sh FILE...    check only these files
#   scripts/check-format.sh --fix [FILE...]  format them in place instead
#
# The version is pinned to clang-format 14 (Debian 12's), because another
# major version formats some constructs differently and the check would then
# fail on code that is clean for everyone else. CLANG_FORMAT overrides it.
set -euo pipefail
cd "$(dirname "$0")/.."

fix=0
if [[ "${1:-}" == "--fix" ]]; then
  fix=1
  shift
fi

clang_format="${CLANG_FORMAT:-}"
if [[ -z "$clang_format" ]]; then
  if command -v clang-format-14 >/dev/null 2>&1; then
    clang_format=clang-format-14
  elif command -v clang-format >/dev/null 2>&1 &&
    clang-format --version | grep -q "version 14\."; then
    clang_format=clang-format
  fi
fi
if [[ -z "$clang_format" ]] || ! command -v "$clang_format" >/dev/null 2>&1; then
  echo "check-format: clang-format 14 not found; install it with" \
    "scripts/install-deps.sh (Debian package clang-format-14)" \
    "or set CLANG_FORMAT" >&2
  exit 2
fi
if [[ ! -f .clang-format ]]; then
  echo "check-format: no .clang-format at the repository root" >&2
  exit 2
fi

files=()
if (($# > 0)); then
  files=("$@")
elif git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  while IFS= read -r -d '' f; do
    files+=("$f")
  done < <(git ls-files -z -- '*.h' '*.cc')
else
  # A source tarball without .git: every C++ file outside the build trees.
  while IFS= read -r -d '' f; do
    files+=("${f#./}")
  done < <(find . \( -path ./build -o -path './build-*' -o -path ./.git \) \
    -prune -o -type f \( -name '*.h' -o -name '*.cc' \) -print0 | sort -z)
fi
if ((${#files[@]} == 0)); then
  echo "check-format: no C++ files to check" >&2
  exit 0
fi

if ((fix)); then
  "$clang_format" -i --style=file "${files[@]}"
  echo "check-format: formatted ${#files[@]} file(s) with $clang_format"
  exit 0
fi

# One clang-format run over all files; each violation is reported as
# "FILE:LINE:COL: error: code should be clang-formatted".
rc=0
output=$("$clang_format" --dry-run -Werror --style=file "${files[@]}" 2>&1) ||
  rc=$?
mapfile -t unformatted < <(printf '%s\n' "$output" |
  sed -n 's/^\(.*\):[0-9]*:[0-9]*: error: code should be clang-formatted.*/\1/p' |
  sort -u)
if ((rc != 0 && ${#unformatted[@]} == 0)); then
  # Failed for another reason (an unreadable file, a bad .clang-format).
  printf '%s\n' "$output" >&2
  echo "check-format: $clang_format failed (exit $rc)" >&2
  exit 1
fi

if ((${#unformatted[@]} > 0)); then
  echo "check-format: ${#unformatted[@]} of ${#files[@]} file(s) are not" \
    "clang-format clean ($clang_format, .clang-format):" >&2
  printf '  %s\n' "${unformatted[@]}" >&2
  echo "fix with: scripts/check-format.sh --fix ${unformatted[*]}" >&2
  exit 1
fi
echo "check-format: ${#files[@]} file(s) clean ($clang_format)"
