// The database side of the end-to-end benchmarks: a small libpq
// connection, the outbox events they commit (payloads that carry a bench id,
// and the SQL of one event per transaction), and the open-loop load
// generator of the latency benchmarks.
//
// Threading: a PgConn is used from one thread.
#ifndef OUTBOXD_BENCHMARKS_BENCH_PG_H_
#define OUTBOXD_BENCHMARKS_BENCH_PG_H_

#include <libpq-fe.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace outboxd::bench {

// A plain libpq connection; aborts the benchmark on connection failure.
class PgConn {
 public:
  static absl::StatusOr<std::unique_ptr<PgConn>> Connect(
      const std::string& conninfo);
  ~PgConn();
  PgConn(const PgConn&) = delete;
  PgConn& operator=(const PgConn&) = delete;

  // Runs one simple-protocol query string (may hold several statements).
  absl::Status Exec(const std::string& sql);
  // First column of the first row ("" when no rows).
  absl::StatusOr<std::string> Query(const std::string& sql);
  PGconn* raw() { return conn_; }

 private:
  explicit PgConn(PGconn* conn) : conn_(conn) {}
  PGconn* conn_;
};

// `connections` connections to `conninfo`, for a pool of loader threads.
absl::StatusOr<std::vector<std::unique_ptr<PgConn>>> ConnectAll(
    const std::string& conninfo, int connections);

// The latency benchmarks' load: an open-loop schedule where event i starts
// at t0 + i / rate on connection i % connections, whatever happened to
// earlier events. `event_sql(i)` is one simple-query string that commits
// event i (e.g. "BEGIN; INSERT ...; COMMIT"), so that PQexec returns once it
// is committed; the commit time is taken right after.
struct LoadResult {
  std::vector<int64_t> commit_ns;  // per event; 0 = failed
  int64_t errors = 0;
  int64_t max_slip_ns = 0;  // how late the generator started an event
};
absl::StatusOr<LoadResult> GenerateLoad(
    const std::string& conninfo, int rate, int64_t events, int connections,
    const std::function<std::string(int64_t)>& event_sql);

// ~200 bytes of jsonb as PostgreSQL prints it (keys ordered by length, then
// bytes), carrying `"bid": <bench_id>`. A negative id makes a warm-up event
// without "bid".
std::string EventPayload(int64_t bench_id);
// One transaction of one outbox insert (aggregate "order", one of 5,000
// ids, EventPayload(bench_id), a traceparent header): what a service writes.
std::string OneEventTransactionSql(int64_t bench_id);
// Parses the bench id out of a payload; -1 when it has none.
int64_t ParseBenchId(const char* data, size_t size);
// A version-4-looking uuid derived from `n` (unique per n).
std::string Uuid(uint64_t n);
// An outbox insert of a warm-up event (EventPayload(-1)) of `aggregatetype`.
std::string WarmupEventSql(const std::string& aggregatetype);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_PG_H_
