#include "benchmarks/multidb_fleet.h"

#include <csignal>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmarks/bench_proc.h"

namespace outboxd::bench::multidb {

std::string DatabaseName(int i) { return absl::StrCat("d", i); }

std::string SlotBase(const std::string& setup, int round) {
  return absl::StrCat(setup == "one" ? "bench_one" : "bench_perdb", "_r",
                      round);
}

std::string SlotName(const std::string& setup, int round,
                     const std::string& db) {
  return absl::StrCat(SlotBase(setup, round), "_", db);
}

std::string Topic(const std::string& setup, int round,
                  const std::string& phase) {
  return absl::StrCat("bench.multidb.", setup == "one" ? "one" : "perdb", ".",
                      round, ".", phase);
}

absl::StatusOr<Processes> Fleet::Start(const std::string& phase) {
  std::vector<std::string> common = {
      absl::StrCat("--topic=", Topic(setup_, round_, phase)),
      absl::StrCat("--metrics-address=", options_.metrics ? "127.0.0.1:0" : ""),
      "--log-level=info"};
  common.insert(common.end(), options_.outboxd_args.begin(),
                options_.outboxd_args.end());
  Processes p;
  if (setup_ == "one") {
    std::vector<std::string> args = common;
    args.push_back(absl::StrCat("--databases=", absl::StrJoin(dbs_, ",")));
    args.push_back(absl::StrCat("--slot=", SlotBase(setup_, round_)));
    auto child = env_.StartOutboxd(
        args, absl::StrCat("outboxd-multidb-one-r", round_, "-", phase));
    if (!child.ok()) return child.status();
    p.children.push_back(*std::move(child));
    return p;
  }
  for (const std::string& db : dbs_) {
    std::vector<std::string> args = common;
    args.push_back(absl::StrCat("--slot=", SlotName(setup_, round_, db)));
    auto child = env_.StartOutboxdOn(
        db, args,
        absl::StrCat("outboxd-multidb-perdb-r", round_, "-", db, "-", phase));
    if (!child.ok()) return child.status();
    p.children.push_back(*std::move(child));
  }
  return p;
}

void Fleet::Stop(Processes& p, nlohmann::json& out) {
  for (auto& c : p.children) c->Signal(SIGTERM);
  std::vector<int> codes;
  for (auto& c : p.children) {
    std::optional<int> code = c->Wait(absl::Seconds(30));
    codes.push_back(code.value_or(-1));
  }
  out["exit_codes"] = codes;
}

absl::StatusOr<int64_t> Fleet::WaitAllActive(
    PgConn& admin, const std::function<bool()>& alive) {
  std::vector<std::string> quoted;
  for (const std::string& db : dbs_) {
    quoted.push_back(absl::StrCat("'", SlotName(setup_, round_, db), "'"));
  }
  const std::string sql = absl::StrCat(
      "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name "
      "IN (",
      absl::StrJoin(quoted, ","), ")");
  const std::string want = absl::StrCat(dbs_.size());
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (absl::Now() < deadline) {
    auto v = admin.Query(sql);
    if (!v.ok()) return v.status();
    if (*v == want) return NowNs();
    if (!alive()) {
      return absl::AbortedError(
          absl::StrCat("an outboxd exited (logs in ", env_.work_dir(), ")"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError("not every slot active within 120 s");
}

std::pair<int, int> PublisherConnections(PgConn& admin) {
  auto v = admin.Query(absl::StrCat(
      "SELECT count(*) FILTER (WHERE backend_type = 'walsender') || ' ' || "
      "count(*) FROM pg_stat_activity WHERE usename = '",
      kPublisherRole, "'"));
  std::pair<int, int> c{0, 0};
  if (!v.ok()) return c;
  const size_t space = v->find(' ');
  if (space == std::string::npos) return c;
  (void)absl::SimpleAtoi(v->substr(0, space), &c.first);
  (void)absl::SimpleAtoi(v->substr(space + 1), &c.second);
  return c;
}

void Fleet::DropSlots() {
  for (const std::string& db : dbs_) {
    env_.DropSlot(SlotName(setup_, round_, db));
  }
}

}  // namespace outboxd::bench::multidb
