// CatalogRounds: the loop of a monitor that reads the catalog every
// `interval` (the first round at once), on a thread of its own, over one
// normal (not replication) connection kept across rounds. A round that
// fails (the server restarting, a lost connection) drops the connection,
// which the next round opens again, and is logged once per distinct cause
// ("<what>: <cause>; retrying every <interval>"), with one line when a
// round works again. Never fatal for publishing: a monitor's gauges keep
// their last values. The slot monitor and the publication monitor run on
// it.
//
// Threading: Start() and the destructor from one thread; `round` runs on
// the rounds' thread.
#ifndef OUTBOXD_UPKEEP_CATALOG_ROUNDS_H_
#define OUTBOXD_UPKEEP_CATALOG_ROUNDS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "pg/connection.h"

namespace outboxd {

struct CatalogRoundsOptions {
  std::string conninfo;
  absl::Duration interval = absl::Seconds(10);
  // What a failed round could not do, e.g. "slot metrics: cannot read
  // pg_replication_slots", and the line once it works again.
  std::string failing;
  std::string working_again;
};

class CatalogRounds {
 public:
  using Round = std::function<absl::Status(PgConnection&)>;
  static std::unique_ptr<CatalogRounds> Start(CatalogRoundsOptions options,
                                              Round round);
  ~CatalogRounds();  // stops and joins (a running query finishes first)
  CatalogRounds(const CatalogRounds&) = delete;
  CatalogRounds& operator=(const CatalogRounds&) = delete;

  // Rounds done so far, whether they worked or not.
  uint64_t rounds() const { return rounds_.load(); }

 private:
  CatalogRounds(CatalogRoundsOptions options, Round round)
      : options_(std::move(options)), round_(std::move(round)) {}
  void Run();

  const CatalogRoundsOptions options_;
  const Round round_;
  absl::Notification stop_;
  std::atomic<uint64_t> rounds_{0};
  std::thread thread_;
};

}  // namespace outboxd

#endif  // OUTBOXD_UPKEEP_CATALOG_ROUNDS_H_
