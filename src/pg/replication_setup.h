// Checks and creates what logical replication of the outbox needs: wal_level,
// the publication and the pgoutput slot. Uses a normal connection.
//
// Every identifier is quoted; nothing from flags is pasted into SQL raw.
#ifndef OUTBOXD_PG_REPLICATION_SETUP_H_
#define OUTBOXD_PG_REPLICATION_SETUP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/lsn.h"
#include "pg/connection.h"
#include "pg/identifier.h"

namespace outboxd {

// --failover-slot: whether the slot is created as a failover slot
// (PostgreSQL 17+: synchronized to physical standbys with
// sync_replication_slots = on, so that a promoted standby has it).
enum class FailoverSlot {
  kAuto,  // where the server supports it (17+)
  kOn,    // required: an older server is refused
  kOff,   // never
};

// The first server version with failover slots (server_version_num).
inline constexpr int kFailoverSlotServerVersion = 170000;

struct ReplicationSetupOptions {
  // The outbox tables; empty: no table, logical decoding messages only.
  std::vector<QualifiedName> tables;
  std::string publication = "outbox_pub";
  std::string slot = "outbox_slot";
  FailoverSlot failover = FailoverSlot::kAuto;
};

struct SlotState {
  bool created = false;  // made by this call
  Lsn confirmed_flush;   // where streaming resumes
};

// What pg_replication_slots says about an existing logical pgoutput slot of
// the current database.
struct SlotInfo {
  Lsn confirmed_flush;     // invalid (0) when NULL
  Lsn restart_lsn;         // invalid (0) when NULL (e.g. invalidated)
  std::string wal_status;  // reserved, extended, unreserved or lost
  bool active = false;
  // 17+ (nullopt before): created as a failover slot; synced from a primary
  // (on a promoted server: carried over by the failover).
  std::optional<bool> failover;
  bool synced = false;
  // 17+: why the server invalidated the slot ("" when it is not, or on
  // older servers), e.g. wal_removed, rows_removed, idle_timeout (18).
  std::string invalidation_reason;
  // 16+ (nullopt before): the server's `conflicting`. 16 sets it for every
  // invalidated logical slot, whatever the cause, and has no
  // invalidation_reason: it cannot tell a slot that lost its WAL from one
  // that conflicted with recovery on a standby.
  std::optional<bool> conflicting;

  // The slot can no longer stream: max_slot_wal_keep_size removed WAL it
  // needs (wal_status 'lost'), or it was invalidated otherwise.
  bool invalidated() const {
    return wal_status == "lost" || !restart_lsn.valid() ||
           !invalidation_reason.empty();
  }
};

// kFailedPrecondition naming the problem when wal_level is not logical.
absl::Status CheckWalLevel(PgConnection& conn);

// Creates the publication `FOR TABLE <tables> WITH (publish = 'insert')`
// when missing (an empty publication when there is no table).
// kFailedPrecondition when a table does not exist, or when the publication
// exists (it is then the user's, and outboxd never alters it) but does not
// publish inserts or lacks some of the tables: their events would never
// arrive, so the error names them and the ALTER PUBLICATION that adds them.
// Tables it holds beyond `tables` are fine: their inserts are ignored.
absl::Status EnsurePublication(PgConnection& conn,
                               const ReplicationSetupOptions& options);

// Creates the logical slot with pgoutput when missing. kFailedPrecondition
// when a slot of that name exists with another plugin, is physical, or
// belongs to another database. A tool for tests and first starts: the
// pipeline decides with InspectSlot and the publisher state instead, so
// that a slot it streamed from is never re-created silently
// (sources/slot_loss.h).
absl::StatusOr<SlotState> EnsureSlot(PgConnection& conn,
                                     const ReplicationSetupOptions& options);

// The slot's state; nullopt when no slot of that name exists. Never creates
// anything. kFailedPrecondition, as EnsureSlot, when a slot of that name is
// not a logical pgoutput slot of the current database.
absl::StatusOr<std::optional<SlotInfo>> InspectSlot(
    PgConnection& conn, const ReplicationSetupOptions& options);

// Creates the logical pgoutput slot; returns its start position (the LSN
// from which the server streams transactions). kAlreadyExists when a slot of
// that name exists. With options.failover kAuto or kOn on PostgreSQL 17+
// the slot is a failover slot (the version is the server's, read from the
// connection); kOn on an older server is kFailedPrecondition
// (CheckFailoverSupported).
absl::StatusOr<Lsn> CreateSlot(PgConnection& conn,
                               const ReplicationSetupOptions& options);

// kFailedPrecondition, one line naming the server's version, when
// --failover-slot=on and the server is older than 17.
absl::Status CheckFailoverSupported(PgConnection& conn, FailoverSlot mode);

// Whether a slot created now on this server is a failover slot.
bool CreatesFailoverSlot(PgConnection& conn, FailoverSlot mode);

// Drops the slot. kUnavailable while it is active in another process.
absl::Status DropSlot(PgConnection& conn, const std::string& slot);

// Where the server's WAL is: its current write position and timeline. A
// position beyond `current` belongs to another history (outboxd streamed
// from a server whose WAL went further: a restore, or a promoted standby
// that was behind); a new timeline is a new history from its switch point.
struct ServerWal {
  Lsn current;            // pg_current_wal_lsn()
  uint32_t timeline = 0;  // the timeline of that position
};
// kFailedPrecondition on a server in recovery (a standby).
absl::StatusOr<ServerWal> ReadServerWal(PgConnection& conn);

// The root of the partition tree `relation_id` is a partition of; nullopt
// when it is none (or no longer exists).
absl::StatusOr<std::optional<QualifiedName>> PartitionRoot(
    PgConnection& conn, uint32_t relation_id);

// A stable id of the event stream, "<system identifier>/<database>/<slot>":
// the cluster's system identifier (pg_control_system(), unique per initdb
// and kept by physical replicas), the current database and the slot. It is
// the outbox.source header, so consumers of several databases can keep one
// position per source.
absl::StatusOr<std::string> SourceIdentity(PgConnection& conn,
                                           const std::string& slot);

}  // namespace outboxd

#endif  // OUTBOXD_PG_REPLICATION_SETUP_H_
