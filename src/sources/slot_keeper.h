// SlotKeeper: the CDC source's replication slot and outboxd's record of it
// (docs/ARCHITECTURE.md, "Lost slots"). It owns:
//   - the publisher state row (pg/publisher_state.h), opened by the first
//     Acquire and kept across reconnects: what CdcSource records as durable
//     goes through Record();
//   - the slot's lifecycle at every (re)connect: the setup checks (wal_level,
//     publication), the inspection of the slot, the verdict on it
//     (sources/slot_loss.h judges, pure), and what follows: resume, adopt,
//     create, or recover a lost slot by policy (stop, or re-create it and
//     republish);
//   - a standby's connection, kept while the slot is active in another
//     process, so that one query tells when it is free.
// Not the stream: CdcSource starts it from the position Acquire gives and
// hands a failed start back to StartFailed.
//
// Threading: the Publisher's thread only (CdcSource's).
#ifndef OUTBOXD_SOURCES_SLOT_KEEPER_H_
#define OUTBOXD_SOURCES_SLOT_KEEPER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/lsn.h"
#include "metrics/outboxd_metrics.h"
#include "pg/connection.h"
#include "pg/publisher_state.h"
#include "pg/replication_setup.h"
#include "sources/event_source.h"
#include "sources/slot_loss.h"

namespace outboxd {

// What a republish after a lost slot did.
struct RepublishCount {
  uint64_t republished = 0;
  uint64_t dead_lettered = 0;
};
// Publishes again, from the outbox table, every row that may have committed
// after `from` (pipeline/republisher.h), tagged with `source`; returns once
// Kafka acknowledged them.
using RepublishFn = std::function<absl::StatusOr<RepublishCount>(
    const PublisherState& from, Lsn new_slot_start, const std::string& source)>;

struct SlotKeeperOptions {
  std::string conninfo;
  ReplicationSetupOptions setup;
  // While the slot is active in another process, Acquire fails with
  // kUnavailable and this retry-after (sources/event_source.h).
  absl::Duration standby_poll_interval = absl::Milliseconds(20);
  SlotLossPolicy on_slot_loss = SlotLossPolicy::kFail;
  absl::Duration republish_margin = absl::Hours(1);  // for the log line
  RepublishFn republish;
  // Run at the first Acquire after the setup checks; a failure is returned.
  std::function<absl::Status(PgConnection&)> check_at_start;
};

// What a failed START_REPLICATION means, after Acquire judged the slot.
enum class StartFailure {
  // Invalidated since the check (SQLSTATE 55000) and outboxd has a record
  // of the slot: lost, judged again on the next attempt.
  kInvalidated,
  // Active in another process since the check (55006 object_in_use): this
  // instance waits as a standby.
  kSlotTaken,
  // Gone since the check (42704 naming the replication slot: dropped in
  // between): a reconnect inspects it again, and the slot-loss rules
  // decide.
  kSlotGone,
  kOther,  // anything else: returned as it is
};
// Pure. `recorded`: Acquire found a publisher state row.
StartFailure ClassifyStartFailure(const absl::Status& status, bool recorded);

// A verdict of JudgeSlot corrected by what an earlier START_REPLICATION
// said: a slot that looked usable but that START_REPLICATION found
// invalidated is lost. Pure.
SlotVerdict WithStartSaidInvalidated(SlotVerdict verdict,
                                     bool start_said_invalidated);

class SlotKeeper {
 public:
  // `metrics` (its source's) must outlive the keeper.
  SlotKeeper(SlotKeeperOptions options, metrics::SourceMetrics& metrics)
      : options_(std::move(options)), m_(metrics) {}
  SlotKeeper(const SlotKeeper&) = delete;
  SlotKeeper& operator=(const SlotKeeper&) = delete;

  struct Slot {
    // Where the slot streams from: its confirmed position, or the start of
    // a slot created or re-created now.
    Lsn start;
    // The stream starts over at `start`: a first start, a slot created,
    // adopted or re-created, or a server whose WAL is behind the position
    // outboxd streamed to (a restore, a promoted standby that was behind):
    // nothing remembered from before may be used.
    bool new_stream = false;
    // The database's history: "<timeline>" of the server's WAL; positions
    // of another history say nothing about this one's events.
    std::string history;
    // outbox.source: "<system id>/<dbname>/<slot>".
    std::string identity;
    // The normal connection of the checks; give it to StartFailed if the
    // stream does not start (a standby keeps it), drop it otherwise.
    std::unique_ptr<PgConnection> conn;
  };
  // Checks the setup, inspects and judges the slot, and creates, adopts or
  // recovers it. kUnavailable with a retry-after while the slot is active
  // in another process; kDataLoss for a lost slot under
  // --on-slot-loss=fail.
  absl::StatusOr<Slot> Acquire(const ConnectContext& ctx);

  // The status Connect returns when START_REPLICATION failed with `status`
  // after Acquire (ClassifyStartFailure).
  absl::Status StartFailed(const absl::Status& status,
                           std::unique_ptr<PgConnection> conn);

  // Records `ack` in the publisher state row (PublisherStateStore::Record).
  absl::Status Record(Lsn ack, std::optional<int64_t> commit_time_unix_us) {
    return state_->Record(ack, commit_time_unix_us);
  }
  // The position last recorded (Lsn() before the first Acquire).
  Lsn recorded() const {
    return state_ != nullptr ? state_->recorded() : Lsn();
  }

  // A fresh failover slot's sync to standbys (PostgreSQL 17+). A standby
  // syncing slots (sync_replication_slots) makes the slot its own only once
  // the slot, as the primary confirms it, has passed a running-xacts record
  // newer than the standby's first look at it; the primary logs one every
  // 15 s while there are writes, the standby looks every 0.2 to 30 s. For
  // kSyncNudgeWindow after the first Acquire or a slot created with
  // failover, NudgeFailoverSync logs one (pg_log_standby_snapshot()) at
  // most every kSyncNudgeInterval, and CdcSource records (so confirms)
  // keepalive-only progress at every status update (NudgingFailoverSync)
  // instead of every tenth. Called at each status update.
  void NudgeFailoverSync(absl::Time now);
  bool NudgingFailoverSync(absl::Time now) const { return now < nudge_until_; }

 private:
  // The slot is active in another process: keeps `conn` for the next
  // Acquire's one query.
  absl::Status SlotTaken(std::unique_ptr<PgConnection> conn);
  // CreateSlot; a slot created concurrently is inspected again (kUnavailable).
  absl::StatusOr<Lsn> CreateSlotOrRetry(PgConnection& conn);
  // On 17+, unless --failover-slot=off: an existing slot without failover
  // is warned about once and outboxd_slot_failover_ready set to 0.
  void ReportFailover(const SlotInfo& slot, int server_version);
  // Fails with the one error line, or (--on-slot-loss=republish) re-creates
  // the slot, republishes what may have committed after the recorded
  // position and returns the new slot's start.
  absl::StatusOr<Lsn> RecoverLostSlot(PgConnection& conn,
                                      const std::optional<SlotInfo>& slot,
                                      const PublisherState& recorded,
                                      const SlotVerdict& verdict,
                                      const ConnectContext& ctx);

  const SlotKeeperOptions options_;
  metrics::SourceMetrics& m_;
  std::string identity_;
  std::unique_ptr<PublisherStateStore> state_;
  // The row read by the last Acquire (for StartFailed's error line).
  std::optional<PublisherState> recorded_row_;
  // A standby's connection, kept while the slot is active elsewhere.
  std::unique_ptr<PgConnection> standby_conn_;
  // START_REPLICATION failed because the slot is invalidated.
  bool start_said_invalidated_ = false;
  bool warned_not_failover_ = false;
  // NudgeFailoverSync: until when, its own connection, the next snapshot,
  // and whether pg_log_standby_snapshot() is allowed (superuser or a
  // granted EXECUTE; warned about once).
  absl::Time nudge_until_ = absl::InfinitePast();
  std::unique_ptr<PgConnection> nudge_conn_;
  absl::Time next_nudge_ = absl::InfinitePast();
  bool may_log_snapshot_ = true;
  bool nudge_announced_ = false;  // the window's first snapshot was logged
};

}  // namespace outboxd

#endif  // OUTBOXD_SOURCES_SLOT_KEEPER_H_
