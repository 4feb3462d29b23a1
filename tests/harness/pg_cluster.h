// PgCluster: a throwaway PostgreSQL 15 cluster in a temporary directory for
// tests (docs/ARCHITECTURE.md, "Test rigs"): initdb + pg_ctl, as the postgres
// user when running as root, wal_level=logical, fsync=off, a Unix socket in
// the data directory's sibling and a free TCP port on 127.0.0.1. Removed on
// destruction.
#ifndef OUTBOXD_TESTS_HARNESS_PG_CLUSTER_H_
#define OUTBOXD_TESTS_HARNESS_PG_CLUSTER_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace outboxd::testing {

struct PgClusterOptions {
  std::string wal_level = "logical";
  // Extra `-c name=value` settings.
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

  absl::Status CreateDatabase(const std::string& name);
  // Runs SQL through a normal libpq connection; returns the first column of
  // the first row ("" when no rows).
  absl::StatusOr<std::string> Query(const std::string& dbname,
                                    const std::string& sql) const;
  absl::Status Exec(const std::string& dbname, const std::string& sql) const;

  absl::Status Restart();  // pg_ctl restart -m fast
  absl::Status Stop();
  absl::Status StartAgain();

 private:
  PgCluster() = default;
  std::string dir_;
  int port_ = 0;
  std::vector<std::string> settings_;
  bool running_ = false;
};

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
