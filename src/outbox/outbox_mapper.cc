#include "outbox/outbox_mapper.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/pg_time.h"
#include "common/status_macros.h"

namespace outboxd {
namespace {

using pgoutput::TupleValue;

int64_t PgTimeToUnixMillis(int64_t pg_micros) {
  return absl::ToUnixMillis(FromPgTimestamp(pg_micros));
}

}  // namespace

OutboxMapper::OutboxMapper(OutboxMapperOptions options)
    : options_(std::move(options)) {}

absl::Status OutboxMapper::RequireTransaction(absl::string_view what) const {
  if (in_transaction_) return absl::OkStatus();
  return absl::DataLossError(
      absl::StrCat("protocol violation: ", what, " outside a transaction"));
}

absl::StatusOr<const OutboxMapper::CachedRelation*> OutboxMapper::FindRelation(
    uint32_t relation_id) {
  auto it = relations_.find(relation_id);
  if (it == relations_.end()) {
    return absl::DataLossError(
        absl::StrCat("protocol violation: no Relation message for relation id ",
                     relation_id));
  }
  return &it->second;
}

absl::StatusOr<MappedMessage> OutboxMapper::Apply(
    const pgoutput::PgOutputMessage& msg) {
  if (const auto* begin = std::get_if<pgoutput::Begin>(&msg)) {
    if (in_transaction_) {
      return absl::DataLossError(
          "protocol violation: Begin inside a transaction");
    }
    in_transaction_ = true;
    commit_lsn_ = begin->final_lsn;
    commit_time_unix_ms_ = PgTimeToUnixMillis(begin->commit_time);
    next_index_ = 0;
    return TransactionBegin{
        commit_lsn_, commit_time_unix_ms_,
        begin->commit_time + kPgEpochOffsetSeconds * 1000000};
  }
  if (const auto* commit = std::get_if<pgoutput::Commit>(&msg)) {
    RETURN_IF_ERROR(RequireTransaction("Commit"));
    if (commit->commit_lsn != commit_lsn_) {
      return absl::DataLossError(absl::StrCat(
          "protocol violation: Commit at ", commit->commit_lsn.ToString(),
          " for a transaction begun with commit LSN ", commit_lsn_.ToString()));
    }
    in_transaction_ = false;
    ++counters_.transactions;
    return TransactionCommit{commit->end_lsn};
  }
  if (const auto* rel = std::get_if<pgoutput::Relation>(&msg)) {
    return OnRelation(*rel);
  }
  if (const auto* insert = std::get_if<pgoutput::Insert>(&msg)) {
    return OnInsert(*insert);
  }
  if (const auto* message = std::get_if<pgoutput::Message>(&msg)) {
    return OnMessage(*message);
  }
  if (const auto* update = std::get_if<pgoutput::Update>(&msg)) {
    RETURN_IF_ERROR(RequireTransaction("Update"));
    RETURN_IF_ERROR(FindRelation(update->relation_id).status());
    ++counters_.ignored_updates;
    return MappedMessage();
  }
  if (const auto* del = std::get_if<pgoutput::Delete>(&msg)) {
    RETURN_IF_ERROR(RequireTransaction("Delete"));
    RETURN_IF_ERROR(FindRelation(del->relation_id).status());
    ++counters_.ignored_deletes;
    return MappedMessage();
  }
  if (std::holds_alternative<pgoutput::Truncate>(msg)) {
    RETURN_IF_ERROR(RequireTransaction("Truncate"));
    ++counters_.ignored_truncates;
    return MappedMessage();
  }
  // Origin and Type carry nothing the outbox needs.
  return MappedMessage();
}

absl::StatusOr<MappedMessage> OutboxMapper::OnRelation(
    const pgoutput::Relation& rel) {
  ++counters_.relations;
  CachedRelation cached;
  cached.nspname = rel.nspname;
  cached.relname = rel.relname;
  cached.column_count = rel.columns.size();
  cached.column_names.reserve(rel.columns.size());
  for (const auto& c : rel.columns) cached.column_names.push_back(c.name);

  const QualifiedName name{rel.nspname, rel.relname};
  if (std::find(options_.tables.begin(), options_.tables.end(), name) !=
      options_.tables.end()) {
    OutboxRowLayout layout =
        LocateOutboxColumns(cached.column_names, options_.columns);
    if (layout.payload >= 0) {
      SetPayloadType(rel.columns[layout.payload].type_oid, &layout);
    }
    cached.outbox = layout;
    cached.table = absl::StrCat(rel.nspname, ".", rel.relname);
  }
  relations_.insert_or_assign(rel.relation_id, std::move(cached));
  return MappedMessage();
}

absl::StatusOr<MappedMessage> OutboxMapper::OnInsert(
    const pgoutput::Insert& insert) {
  RETURN_IF_ERROR(RequireTransaction("Insert"));
  ASSIGN_OR_RETURN(const CachedRelation* rel, FindRelation(insert.relation_id));
  if (insert.new_tuple.values.size() != rel->column_count) {
    return absl::DataLossError(
        absl::StrCat("protocol violation: Insert into ", rel->nspname, ".",
                     rel->relname, " has ", insert.new_tuple.values.size(),
                     " columns, its Relation ", rel->column_count));
  }
  if (!rel->outbox.has_value()) {
    ++counters_.ignored_other_tables;
    return MappedMessage();
  }
  cells_.clear();
  for (size_t i = 0; i < rel->column_count; ++i) {
    const TupleValue& v = insert.new_tuple.values[i];
    RowCell& cell = cells_.emplace_back();
    cell.name = rel->column_names[i];
    if (v.kind == TupleValue::Kind::kText ||
        v.kind == TupleValue::Kind::kBinary) {
      cell.text = v.data;
    }
    cell.unchanged_toast = v.kind == TupleValue::Kind::kUnchangedToast;
  }
  RowEvent event = RowToEvent(cells_, *rel->outbox, options_.columns,
                              RowOrigin{NextPosition(), std::nullopt,
                                        commit_time_unix_ms_, rel->table});
  if (auto* bad = std::get_if<InvalidEvent>(&event)) {
    ++counters_.invalid_events;
    return std::move(*bad);
  }
  ++counters_.events;
  return std::get<OutboxEvent>(std::move(event));
}

absl::StatusOr<MappedMessage> OutboxMapper::OnMessage(
    const pgoutput::Message& message) {
  if (!message.transactional) {
    // Not atomic with the business change: not an event.
    ++counters_.ignored_nontransactional_messages;
    return MappedMessage();
  }
  RETURN_IF_ERROR(RequireTransaction("transactional Message"));
  if (options_.message_prefix.empty() ||
      message.prefix != options_.message_prefix) {
    ++counters_.ignored_other_prefix_messages;
    return MappedMessage();
  }
  OutboxEvent event;
  event.position = NextPosition();
  event.commit_time_unix_ms = commit_time_unix_ms_;
  event.default_content_type = "application/json";  // the content is JSON
  absl::Status s = ParseMessageEvent(message.content, &event);
  if (!s.ok()) {
    ++counters_.invalid_events;
    InvalidEvent bad;
    bad.position = event.position;
    bad.commit_time_unix_ms = commit_time_unix_ms_;
    bad.reason = std::string(s.message());
    bad.content = std::string(message.content);
    bad.aggregate_id = event.aggregate_id;
    return bad;
  }
  ++counters_.events;
  return event;
}

}  // namespace outboxd
