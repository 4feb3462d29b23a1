// PgCluster: a throwaway PostgreSQL cluster in a temporary directory for
// tests (docs/ARCHITECTURE.md, "Test rigs"): initdb + pg_ctl, as the postgres
// user when running as root, wal_level=logical, fsync=off, a Unix socket in
// the data directory's sibling and a free TCP port on 127.0.0.1. Removed on
// destruction.
//
// The major version is PgClusterOptions::version, else the environment's
// OUTBOXD_TEST_PG_VERSION, else 15 (Debian's, /usr/lib/postgresql/15/bin);
// 16, 17 and 18 come from scripts/fetch-postgres.sh (.cache/postgres/<major>,
// fetched on first use). The server's own version is read back after start
// (version_num()), never assumed. A running cluster can be copied into a
// physical standby (StartStandby) without pg_basebackup, whose 15 cannot
// back up newer servers.
#ifndef OUTBOXD_TESTS_HARNESS_PG_CLUSTER_H_
#define OUTBOXD_TESTS_HARNESS_PG_CLUSTER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace outboxd::testing {

struct PgClusterOptions {
  // PostgreSQL major version: 15, 16, 17, 18; 0 = TestPgVersion().
  int version = 0;
  std::string wal_level = "logical";
  // Extra `-c name=value` settings (e.g. on 17+ the primary's
  // synchronized_standby_slots for failover slots).
  std::vector<std::string> settings;
};

// The version tests run on when they do not say: $OUTBOXD_TEST_PG_VERSION
// (a major, e.g. "17"), else 15.
int TestPgVersion();

// The bin/ directory of PostgreSQL `major`: $OUTBOXD_PG_BINDIR if set (any
// version), Debian's for 15, else .cache/postgres/<major>/bin (or under
// $OUTBOXD_PG_CACHE), fetched by scripts/fetch-postgres.sh when missing.
absl::StatusOr<std::string> PgBinDir(int major);

struct StandbyOptions {
  // The physical replication slot created on the primary for the standby.
  std::string slot = "standby";
  // Extra `-c name=value` settings of the standby (on 17+, e.g.
  // sync_replication_slots=on to sync failover slots).
  std::vector<std::string> settings;
};

class PgCluster {
 public:
  static absl::StatusOr<std::unique_ptr<PgCluster>> Start(
      const PgClusterOptions& options = {});
  ~PgCluster();  // stops the server (immediate) and removes the directory

  // libpq conninfo for `dbname` as the superuser postgres over TCP.
  std::string ConnInfo(const std::string& dbname = "postgres") const;
  int port() const { return port_; }
  // server_version_num read from the running server (e.g. 170005) and its
  // major (17).
  int version_num() const { return version_num_; }
  int major_version() const { return version_num_ / 10000; }
  const std::string& bin_dir() const { return bin_dir_; }
  std::string data_dir() const { return dir_ + "/data"; }
  std::string log_file() const { return dir_ + "/postgres.log"; }

  absl::Status CreateDatabase(const std::string& name);
  // Runs SQL through a normal libpq connection; returns the first column of
  // the first row ("" when no rows).
  absl::StatusOr<std::string> Query(const std::string& dbname,
                                    const std::string& sql) const;
  absl::Status Exec(const std::string& dbname, const std::string& sql) const;

  absl::Status Restart();  // pg_ctl restart -m fast
  absl::Status Stop();
  absl::Status StartAgain();
  // pg_ctl stop -m immediate: the server dies as in a crash (no shutdown
  // checkpoint; it recovers from WAL when started again).
  absl::Status Crash();

  // A physical standby of this running cluster, started and streaming
  // through a physical slot (options.slot) with hot_standby_feedback=on,
  // its primary_conninfo naming dbname=postgres (17+ slot sync needs one),
  // wal_receiver_status_interval=1s (feedback each second).
  // Built without pg_basebackup: pg_backup_start() in a session kept open,
  // a copy of the data directory, pg_backup_stop()'s backup_label. The
  // standby has this cluster's version and settings plus options.settings.
  absl::StatusOr<std::unique_ptr<PgCluster>> StartStandby(
      const StandbyOptions& options = {});
  // Waits until `standby` has replayed everything this primary wrote so far
  // (pg_current_wal_lsn()).
  absl::Status WaitForReplay(const PgCluster& standby,
                             absl::Duration timeout = absl::Seconds(60)) const;
  // pg_ctl promote -w: a standby becomes a primary.
  absl::Status Promote();
  absl::StatusOr<bool> InRecovery() const;

 private:
  PgCluster() = default;
  absl::Status Init(const PgClusterOptions& options);
  absl::Status StartOnFreePort();
  absl::Status ReadVersion();
  std::vector<std::string> PgCtl(bool with_server_options,
                                 std::vector<std::string> args) const;

  std::string bin_dir_;
  std::string dir_;
  int port_ = 0;
  int version_num_ = 0;
  PgClusterOptions options_;
  std::vector<std::string> settings_;
  bool running_ = false;
};

// libpq conninfo naming every cluster of `clusters` as a host, in order,
// with target_session_attrs=read-write: whichever is the primary (as
// outboxd's --pg names a primary and its standbys for failover).
std::string MultiHostConnInfo(const std::vector<const PgCluster*>& clusters,
                              const std::string& dbname = "postgres");

// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0,
// then closed): for a server about to be started by the caller.
absl::StatusOr<int> FreeTcpPort();

// One row of a query result as text; nullopt is SQL NULL.
using Row = std::vector<std::optional<std::string>>;

// Every row `sql` returns, on a new connection to `conninfo`. A failure to
// connect or to run it is a test failure (ADD_FAILURE) and returns no rows.
std::vector<Row> QueryRows(const std::string& conninfo, const std::string& sql);

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_HARNESS_PG_CLUSTER_H_
