#include "benchmarks/bench_pg.h"

#include <string.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "benchmarks/bench_proc.h"

namespace outboxd::bench {

// --- PgConn ------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<PgConn>> PgConn::Connect(
    const std::string& conninfo) {
  PGconn* conn = PQconnectdb(conninfo.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string message = PQerrorMessage(conn);
    PQfinish(conn);
    return absl::UnavailableError(absl::StrCat("connect: ", message));
  }
  return std::unique_ptr<PgConn>(new PgConn(conn));
}

PgConn::~PgConn() { PQfinish(conn_); }

absl::Status PgConn::Exec(const std::string& sql) {
  PGresult* res = PQexec(conn_, sql.c_str());
  ExecStatusType st = PQresultStatus(res);
  absl::Status status;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    status = absl::InternalError(
        absl::StrCat(PQresultErrorMessage(res), " in: ", sql.substr(0, 200)));
  }
  PQclear(res);
  return status;
}

absl::StatusOr<std::string> PgConn::Query(const std::string& sql) {
  PGresult* res = PQexec(conn_, sql.c_str());
  ExecStatusType st = PQresultStatus(res);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    std::string message = PQresultErrorMessage(res);
    PQclear(res);
    return absl::InternalError(
        absl::StrCat(message, " in: ", sql.substr(0, 200)));
  }
  std::string value;
  if (PQntuples(res) > 0 && PQnfields(res) > 0) value = PQgetvalue(res, 0, 0);
  PQclear(res);
  return value;
}

absl::StatusOr<std::vector<std::unique_ptr<PgConn>>> ConnectAll(
    const std::string& conninfo, int connections) {
  std::vector<std::unique_ptr<PgConn>> conns;
  for (int c = 0; c < connections; ++c) {
    auto conn = PgConn::Connect(conninfo);
    if (!conn.ok()) return conn.status();
    conns.push_back(*std::move(conn));
  }
  return conns;
}

absl::StatusOr<LoadResult> GenerateLoad(
    const std::string& conninfo, int rate, int64_t events, int connections,
    const std::function<std::string(int64_t)>& event_sql) {
  LoadResult result;
  result.commit_ns.assign(events, 0);
  auto pool = ConnectAll(conninfo, connections);
  if (!pool.ok()) return pool.status();
  std::vector<std::unique_ptr<PgConn>>& conns = *pool;
  std::atomic<int64_t> errors{0};
  std::vector<int64_t> slips(connections, 0);
  const int64_t t0 = NowNs() + 20000000;  // 20 ms to get the threads going
  const double step_ns = 1e9 / rate;
  std::vector<std::thread> threads;
  for (int c = 0; c < connections; ++c) {
    threads.emplace_back([&, c] {
      PgConn& conn = *conns[c];
      for (int64_t i = c; i < events; i += connections) {
        int64_t start = t0 + static_cast<int64_t>(i * step_ns);
        int64_t now = NowNs();
        if (now < start) {
          SleepUntilNs(start);
        } else {
          slips[c] = std::max(slips[c], now - start);
        }
        absl::Status s = conn.Exec(event_sql(i));
        if (s.ok()) {
          result.commit_ns[i] = NowNs();
        } else {
          if (errors.fetch_add(1) < 3) std::cerr << s << "\n";
          (void)conn.Exec("ROLLBACK");
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  result.errors = errors.load();
  result.max_slip_ns = *std::max_element(slips.begin(), slips.end());
  return result;
}

// --- payloads ---------------------------------------------------------------

std::string Uuid(uint64_t n) {
  return absl::StrFormat("%08x-%04x-4%03x-a%03x-%012x",
                         static_cast<uint32_t>(n * 2654435761u),
                         static_cast<uint32_t>((n >> 32) & 0xffff),
                         static_cast<uint32_t>(n & 0xfff),
                         static_cast<uint32_t>((n >> 12) & 0xfff),
                         static_cast<uint64_t>(n & 0xffffffffffffULL));
}

std::string EventPayload(int64_t bench_id) {
  if (bench_id < 0) return R"({"warmup": 1})";
  int64_t i = bench_id;
  return absl::StrCat(
      R"({"bid": )", i, R"(, "items": [{"qty": )", i % 9 + 1,
      R"(, "sku": "SKU-)", 100000 + i % 900000,
      R"(", "price": 1999}], "total": 1999, )",
      R"("created": "2024-07-11T10:15:30.123456+00:00", "currency": "EUR", )",
      R"("customer": {"id": )", 4200 + i % 10000, R"(, "email": "customer)",
      i % 10000, R"(@example.com"}})");
}

std::string OneEventTransactionSql(int64_t id) {
  return absl::StrCat(
      "BEGIN; INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
      "payload, headers) VALUES ('order', 'order-",
      1000000 + id % 5000, "', 'OrderCreated', '", EventPayload(id),
      "', '{\"traceparent\": \"00-4bf92f3577b34da6a3ce929d0e0e4736-",
      absl::StrFormat("%016x", id), "-01\"}'); COMMIT");
}

int64_t ParseBenchId(const char* data, size_t size) {
  static constexpr char kKey[] = "\"bid\": ";
  static constexpr size_t kKeyLen = sizeof(kKey) - 1;
  if (data == nullptr) return -1;
  const char* end = data + size;
  const char* p = static_cast<const char*>(memmem(data, size, kKey, kKeyLen));
  if (p == nullptr) return -1;
  p += kKeyLen;
  int64_t v = 0;
  bool any = false;
  while (p < end && *p >= '0' && *p <= '9') {
    v = v * 10 + (*p - '0');
    ++p;
    any = true;
  }
  return any ? v : -1;
}

std::string WarmupEventSql(const std::string& aggregatetype) {
  return absl::StrCat(
      "INSERT INTO public.outbox (aggregatetype, aggregateid, type, "
      "payload) VALUES ('",
      aggregatetype, "', 'warmup', 'Warmup', '", EventPayload(-1), "')");
}

}  // namespace outboxd::bench
