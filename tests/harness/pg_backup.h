// A base backup of a test cluster and a restore from it: the server's WAL
// goes back to where the backup ended, on the same timeline and with the
// same system identifier, as after a restore of a production database from
// last night's backup. Rows committed after the backup are gone; so are the
// logical replication slots (pg_basebackup never copies pg_replslot).
#ifndef OUTBOXD_TESTS_HARNESS_PG_BACKUP_H_
#define OUTBOXD_TESTS_HARNESS_PG_BACKUP_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/harness/pg_cluster.h"

namespace outboxd::testing {

// pg_basebackup -X stream (the cluster's own version's) of the running
// `cluster` into the directory `name` beside its data directory (removed
// with the cluster): the data files and the WAL that makes them
// consistent. Returns the backup's path.
absl::StatusOr<std::string> TakeBaseBackup(const PgCluster& cluster,
                                           const std::string& name);

// Stops `cluster` as in a crash (pg_ctl stop -m immediate), replaces its
// data directory with a copy of the backup at `backup` (the backup stays,
// so it can be restored again) and starts it on the same port: it replays
// the backup's WAL and comes up where the backup ended.
absl::Status RestoreBaseBackup(PgCluster& cluster, const std::string& backup);

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_HARNESS_PG_BACKUP_H_
