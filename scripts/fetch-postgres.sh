#!/usr/bin/env bash
# Fetches PostgreSQL server binaries newer than Debian 12's 15 (DESIGN.md
# section 8) into .cache/postgres/<major> once, and prints that folder's bin/.
# The jars come from Maven Central (tests/postgres/pom.xml pins the versions:
# zonky's embedded-postgres binaries, bin/initdb, pg_ctl, postgres with a
# RUNPATH of $ORIGIN/../lib, so no LD_LIBRARY_PATH). A folder whose stamp
# matches the pom costs nothing and needs no network.
#
#   scripts/fetch-postgres.sh           # 16, 17 and 18; prints three bin dirs
#   scripts/fetch-postgres.sh 17        # one major; prints its bin dir
#   scripts/fetch-postgres.sh 15        # Debian's: /usr/lib/postgresql/15/bin
#   PG_CACHE=/some/dir scripts/fetch-postgres.sh   # another cache folder
# The tree is world-readable: tests run as root and start the server as the
# `postgres` user (runuser), which must read and execute it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pom=$root/tests/postgres/pom.xml
cache=${PG_CACHE:-$root/.cache/postgres}
label=fetch-postgres

fail() { echo "$label: $*" >&2; exit 1; }

fetch_one() {
  local major=$1 dir=$cache/$1
  if [[ $major == 15 ]]; then
    [[ -x /usr/lib/postgresql/15/bin/postgres ]] ||
      fail "PostgreSQL 15 is Debian's: apt-get install postgresql-15"
    echo /usr/lib/postgresql/15/bin
    return
  fi
  grep -q "<id>pg$major</id>" "$pom" ||
    fail "no PostgreSQL $major in $pom (15, 16, 17 and 18 are known)"
  local stamp
  stamp="$major $(sha256sum "$pom" | cut -d' ' -f1)"
  complete() { [[ -f "$dir/.stamp" && $(<"$dir/.stamp") == "$stamp" ]]; }
  if complete; then
    echo "$dir/bin"
    return
  fi
  for tool in java mvn unzip xz; do
    command -v "$tool" >/dev/null ||
      fail "$tool not found (scripts/install-deps.sh installs it)"
  done
  mkdir -p "$cache"
  # One fetch at a time per major (parallel ctest runs share the cache).
  exec 9>"$dir.lock"
  flock 9
  if complete; then
    exec 9>&-
    echo "$dir/bin"
    return
  fi
  echo "$label: fetching PostgreSQL $major (Maven Central) into $dir" >&2
  local tmp
  tmp=$(mktemp -d "$dir.tmp.XXXXXX")
  # shellcheck disable=SC2064  # expand $tmp now
  trap "rm -rf '$tmp'" EXIT
  mvn -q -B -Dstyle.color=never -f "$pom" "dependency:copy@pg$major" \
    -DoutputDirectory="$tmp/jar" >&2 ||
    fail "Maven could not fetch PostgreSQL $major (network? see above)"
  local jar
  jar=$(find "$tmp/jar" -name '*.jar' | head -n 1)
  [[ -n $jar ]] || fail "Maven fetched no jar for PostgreSQL $major"
  mkdir "$tmp/pg"
  unzip -p "$jar" postgres-linux-x86_64.txz | tar -xJ -C "$tmp/pg" ||
    fail "could not unpack postgres-linux-x86_64.txz from $jar"
  rm -rf "$tmp/jar"
  [[ -x $tmp/pg/bin/postgres && -x $tmp/pg/bin/initdb &&
     -x $tmp/pg/bin/pg_ctl && -f $tmp/pg/lib/postgresql/pgoutput.so ]] ||
    fail "the PostgreSQL $major archive lacks bin/postgres, initdb, pg_ctl or pgoutput.so"
  local version
  version=$("$tmp/pg/bin/postgres" --version) ||
    fail "the fetched PostgreSQL $major server does not run on this machine"
  [[ $version == *" $major."* ]] ||
    fail "expected PostgreSQL $major, the archive holds: $version"
  chmod -R a+rX "$tmp/pg"
  echo "$stamp" >"$tmp/pg/.stamp"
  rm -rf "$dir"
  mv "$tmp/pg" "$dir"
  rm -rf "$tmp"
  trap - EXIT
  exec 9>&-
  echo "$label: $version in $dir" >&2
  echo "$dir/bin"
}

if (($# == 0)); then
  set -- 16 17 18
fi
for major in "$@"; do
  fetch_one "$major"
done
