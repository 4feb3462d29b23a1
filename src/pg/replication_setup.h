// Checks and creates what logical replication of the outbox needs: wal_level,
// the publication and the pgoutput slot. Uses a normal connection.
//
// Every identifier is quoted; nothing from flags is pasted into SQL raw.
#ifndef OUTBOXD_PG_REPLICATION_SETUP_H_
#define OUTBOXD_PG_REPLICATION_SETUP_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/lsn.h"
#include "pg/connection.h"

namespace outboxd {

// A schema-qualified table name as given on the command line: `tbl`,
// `schema.tbl`, or with double-quoted parts (`"my schema"."a""b"`).
// Unquoted parts are folded to lower case, as PostgreSQL does.
struct QualifiedName {
  std::string schema = "public";
  std::string name;

  std::string ToString() const;  // schema.name, quoted where needed
};
absl::StatusOr<QualifiedName> ParseQualifiedName(absl::string_view text);

struct ReplicationSetupOptions {
  // nullopt: no outbox table, logical decoding messages only.
  std::optional<QualifiedName> table;
  std::string publication = "outbox_pub";
  std::string slot = "outbox_slot";
};

struct SlotState {
  bool created = false;        // made by this call
  Lsn confirmed_flush;         // where streaming resumes
};

// kFailedPrecondition naming the problem when wal_level is not logical.
absl::Status CheckWalLevel(PgConnection& conn);

// Creates the publication `FOR TABLE <table> WITH (publish = 'insert')`
// when missing (an empty publication when there is no table).
// kFailedPrecondition when the table does not exist.
absl::Status EnsurePublication(PgConnection& conn,
                               const ReplicationSetupOptions& options);

// Creates the logical slot with pgoutput when missing. kFailedPrecondition
// when a slot of that name exists with another plugin, is physical, or
// belongs to another database.
absl::StatusOr<SlotState> EnsureSlot(PgConnection& conn,
                                     const ReplicationSetupOptions& options);

// A stable id of the event stream, "<system identifier>/<database>/<slot>":
// the cluster's system identifier (pg_control_system(), unique per initdb
// and kept by physical replicas), the current database and the slot. It is
// the outbox.source header, so consumers of several databases can keep one
// position per source.
absl::StatusOr<std::string> SourceIdentity(PgConnection& conn,
                                           const std::string& slot);

}  // namespace outboxd

#endif  // OUTBOXD_PG_REPLICATION_SETUP_H_
