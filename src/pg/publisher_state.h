// PublisherStateStore: outboxd's own record of where it got to, kept in the
// database (table outbox.publisher_state, one row per slot), so that it
// survives a restart of outboxd and a failover to a physical standby (the
// row replicates with the rest of the database, the slot does not on
// PostgreSQL <= 16).
//
// The row says "outboxd has streamed from this slot, and every event up to
// last_ack_lsn is acknowledged by Kafka". The pipeline writes it BEFORE it
// reports a flush position to the server, so a healthy slot never has
// confirmed_flush_lsn past last_ack_lsn: a slot that does was re-created or
// advanced by someone else (sources/slot_loss.h).
//
// With the position it keeps what a republish needs to find every outbox
// row that may have committed after it:
//   - last_ack_commit_time: commit time of the newest transaction at or
//     before the position (server clock); rows committed later have a
//     created_at after it minus the longest transaction;
//   - xmin_horizon (xid8): every transaction with a lower id had finished
//     when the WAL was at or before the position, so a row whose xmin is
//     older was committed at or before it (no margin needed; frozen rows
//     excepted, which the time criterion covers).
// NULL in either means "unknown": a republish then takes every row.
//
// The reconciler (pipeline/reconciler.h) keeps in reconciled_before (server
// time) how far it judged the table: a process started later judges the
// rows created from there on, asking Kafka about those an earlier process
// may have published. Added to an older table when permitted; without it
// (NULL) a restart judges from its own start.
//
// Writing the row makes WAL; the table is not in the publication.
//
// Owns one normal connection, re-opened after an error. Not thread-safe:
// the pipeline thread owns it.
#ifndef OUTBOXD_PG_PUBLISHER_STATE_H_
#define OUTBOXD_PG_PUBLISHER_STATE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/lsn.h"
#include "pg/connection.h"

namespace outboxd {

// The table, schema-qualified, as created by sql/outbox.sql.
inline constexpr char kPublisherStateTable[] = "outbox.publisher_state";

// The DDL of the table (idempotent); also in sql/outbox.sql.
extern const char kPublisherStateDdl[];

struct PublisherState {
  std::string slot;
  std::string source;  // SourceIdentity() when written
  Lsn last_ack;
  std::optional<int64_t> commit_time_unix_us;  // nullopt: unknown
  std::string commit_time_text;                // as PostgreSQL prints it
  std::optional<std::string> xmin_horizon;     // xid8 as text; nullopt: unknown
};

// (xmin, wal): every transaction id below `xmin` had finished when the WAL
// insert position was `wal`, so its commit record lies before `wal`.
struct XminSample {
  std::string xmin;  // xid8 as text
  Lsn wal;
  int64_t server_time_unix_us = 0;  // the server's clock at the sample
};

class PublisherStateStore {
 public:
  // Connects and makes sure the table exists: creates it when missing and
  // permitted, otherwise kFailedPrecondition saying what to run.
  static absl::StatusOr<std::unique_ptr<PublisherStateStore>> Open(
      const std::string& conninfo, const std::string& slot,
      const std::string& source);
  PublisherStateStore(const PublisherStateStore&) = delete;
  PublisherStateStore& operator=(const PublisherStateStore&) = delete;

  // The row of this slot; nullopt when there is none (a first start).
  absl::StatusOr<std::optional<PublisherState>> Read();

  // Takes a sample now and remembers it for later Record() calls.
  absl::StatusOr<XminSample> TakeSample();

  // Records `ack` (acknowledged by Kafka) with the commit time of the newest
  // transaction at or before it (nullopt: keep the recorded one). The xmin
  // horizon is the newest remembered sample taken at or before `ack`
  // (`horizon` overrides it). Only moves forward unless `force` (a
  // re-created slot, or a source that changed); a row already further
  // stays. Rows written here also yield a new sample.
  absl::Status Record(Lsn ack, std::optional<int64_t> commit_time_unix_us,
                      std::optional<std::string> horizon = std::nullopt,
                      bool force = false);

  // The position last written by this store (or read), Lsn() before that.
  Lsn recorded() const { return recorded_; }

  // The stream starts over in another history (a new slot, or a server
  // whose WAL is behind what was recorded): forgets the recorded position
  // and the samples, which belong to the old one; `at` is the row's
  // position in the new history (Lsn() when unknown).
  void StartOver(Lsn at) {
    recorded_ = at;
    samples_.clear();
  }

 private:
  PublisherStateStore(std::string conninfo, std::string slot,
                      std::string source)
      : conninfo_(std::move(conninfo)),
        slot_(std::move(slot)),
        source_(std::move(source)) {}
  absl::Status Connect();
  absl::Status EnsureTable();
  // Adds the column reconciled_before to a table of an older outboxd when
  // permitted; a warning (naming the DDL) when not.
  absl::Status AddReconciledBefore();
  // Runs `sql` on the connection, re-opened first when it broke.
  absl::StatusOr<PgResult> Run(
      const std::string& sql,
      const std::vector<std::optional<std::string>>& params);

  const std::string conninfo_;
  const std::string slot_;
  const std::string source_;
  std::unique_ptr<PgConnection> conn_;
  std::deque<XminSample> samples_;  // oldest first
  Lsn recorded_;
};

// The reconciler's side of the row, on its own connection: its
// reconciled_before (server unix us); nullopt when there is no row, no
// value or no such column.
absl::StatusOr<std::optional<int64_t>> ReadReconciledBefore(
    PgConnection& conn, const std::string& slot);
// Sets it; false when there is no row yet, an error when the column is
// missing.
absl::StatusOr<bool> RecordReconciledBefore(PgConnection& conn,
                                            const std::string& slot,
                                            int64_t unix_us);

}  // namespace outboxd

#endif  // OUTBOXD_PG_PUBLISHER_STATE_H_
