// InboxStore: the inbox's PostgreSQL side. It owns the connection, the three
// tables (processed event ids, consumed offsets, source positions), the
// statements on them (built once, prepared once) and the transaction in
// which one record's handler runs with its bookkeeping:
//   BEGIN; INSERT the event id ON CONFLICT DO NOTHING; run the handler if
//   the id is new (and store the source position); store the next offset;
//   COMMIT.
// Nothing Kafka: the caller commits Kafka offsets after the store did.
//
// Errors are sorted by whose they are: the handler's (including a COMMIT
// that fails because of what the handler changed) come back as
// Outcome::kHandlerFailed with the reason; the store's own (database down)
// are returned as a Status (kUnavailable when the connection is lost).
//
// Threading: not thread-safe; one thread (the inbox's Run thread).
#ifndef OUTBOXD_CONSUMER_INBOX_STORE_H_
#define OUTBOXD_CONSUMER_INBOX_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "consumer/inbox.h"
#include "kafka/group_consumer.h"
#include "pg/connection.h"

namespace outboxd {

// The SQL of the store, built from the table names of the options. Pure.
struct InboxStatements {
  // kInvalidArgument naming the table whose name is not a (schema-qualified)
  // identifier.
  static absl::StatusOr<InboxStatements> ForTables(
      const std::string& processed_table, const std::string& offsets_table,
      const std::string& sources_table);

  // CREATE TABLE IF NOT EXISTS of the three tables.
  std::string ddl;
  // $1 group, $2 event id, $3 status, $4 topic, $5 partition, $6 offset,
  // $7 source, $8 lsn, $9 index (the last three may be NULL). Inserts no
  // row for an id the group has already.
  std::string insert_processed;
  // $1 group, $2 topic, $3 partition, $4 next offset.
  std::string store_offset;
  // $1 group, $2 source, $3 lsn, $4 index: kept only when newer.
  std::string store_source;
  // $1 group, $2 topic, $3 partition -> next_offset (no row: none stored).
  std::string load_offset;
  // $1 group, $2 text[] of distinct ids -> how many the group applied.
  std::string dependencies;
};

class InboxStore {
 public:
  enum class Outcome { kApplied, kDuplicate, kHandlerFailed };

  // Connects, creates the tables when options.create_tables (serialised
  // with an advisory lock: concurrent CREATE TABLE IF NOT EXISTS can still
  // collide) and prepares the statements. Missing tables show here.
  static absl::StatusOr<std::unique_ptr<InboxStore>> Open(
      const InboxOptions& options);
  InboxStore(const InboxStore&) = delete;
  InboxStore& operator=(const InboxStore&) = delete;

  // Where `tp` resumes: the next offset stored with its last effect, nullopt
  // when none is stored.
  absl::StatusOr<std::optional<int64_t>> LoadOffset(const TopicPartition& tp);

  // Whether every id in `ids` is 'applied' for the group (by any member).
  absl::StatusOr<bool> DependenciesApplied(const std::vector<std::string>& ids);

  // One attempt at `record` in one transaction (see the file comment). With
  // kHandlerFailed the transaction is rolled back and *handler_error holds
  // why; with kApplied or kDuplicate it is committed, offset included.
  absl::StatusOr<Outcome> Apply(const InboxRecord& record,
                                const InboxHandler& handler,
                                absl::Status* handler_error);

  // Records `record` as 'dead-lettered' with its next offset, in one
  // transaction, so the group moves on.
  absl::Status MarkDeadLettered(const InboxRecord& record);

 private:
  InboxStore(std::string group_id, InboxStatements sql,
             std::unique_ptr<PgConnection> db);
  absl::Status Prepare();
  absl::StatusOr<PgResult> Exec(
      const std::string& sql,
      const std::vector<std::optional<std::string>>& params);
  absl::StatusOr<Outcome> ApplyInTransaction(const InboxRecord& record,
                                             const InboxHandler& handler,
                                             absl::Status* handler_error);
  absl::StatusOr<PgResult> InsertProcessed(const InboxRecord& r,
                                           const char* status);
  absl::Status StoreOffset(const InboxRecord& r);
  absl::Status Commit();
  void RollbackQuietly();

  const std::string group_id_;
  const InboxStatements sql_;
  std::unique_ptr<PgConnection> db_;
  std::map<std::string, std::string> prepared_names_;  // sql -> name
};

}  // namespace outboxd

#endif  // OUTBOXD_CONSUMER_INBOX_STORE_H_
