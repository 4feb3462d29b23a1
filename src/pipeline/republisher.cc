#include "pipeline/republisher.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "outbox/row_to_event.h"
#include "pg/connection.h"
#include "sources/outbox_table.h"

namespace outboxd {
namespace {

// How long the republish waits between looks at a topic whose state the
// brokers cannot tell yet, or at a full queue (serving reports meanwhile).
constexpr absl::Duration kWaitInterval = absl::Milliseconds(50);
// How long one metadata lookup of a topic may take.
constexpr absl::Duration kTopicLookupTimeout = absl::Seconds(3);
// Registering a transactional producer, committing or aborting.
constexpr absl::Duration kTransactionTimeout = absl::Seconds(30);

// A recorded xmin horizon further back than this (in transaction ids) cannot
// be compared with 32-bit row xmins: every row is taken instead.
constexpr int64_t kMaxHorizonAge = 2000000000;

// Builds the SELECT: the outbox table's select_list(). $1 commit time
// (unix us), $2 margin (s), $3 xmin horizon (xid8).
absl::StatusOr<std::string> BuildQuery(const OutboxTable& t,
                                       const RepublishOptions& o) {
  ASSIGN_OR_RETURN(
      std::string created,
      t.Require(o.created_at_column,
                "timestamptz NOT NULL DEFAULT now(), as in sql/outbox.sql: it "
                "finds the rows that may have committed after the last "
                "acknowledged event"));
  const std::string seq = t.Optional(o.seq_column);
  const std::string& table = t.quoted_name();
  return absl::StrCat(
      "SELECT ", t.select_list(), " FROM ", table,
      " WHERE $1::bigint IS NULL OR $3::xid8 IS NULL OR ", table, ".", created,
      " >= to_timestamp(0) + $1::bigint * interval '1 microsecond' - "
      "make_interval(secs => $2::double precision) OR "
      "age(xmin) <= age(($3::xid8::text::numeric % 4294967296)::text::xid) OR "
      "pg_snapshot_xmax(pg_current_snapshot())::text::numeric - "
      "$3::xid8::text::numeric >= ",
      kMaxHorizonAge, " ORDER BY ", table, ".", created,
      seq.empty() ? "" : absl::StrCat(", ", table, ".", seq));
}

}  // namespace

RepublishProducer::RepublishProducer(const RecordBuilder& records,
                                     bool fail_on_invalid,
                                     const std::atomic<bool>& stop)
    : records_(records), fail_on_invalid_(fail_on_invalid), stop_(stop) {}

absl::StatusOr<std::unique_ptr<RepublishProducer>> RepublishProducer::Create(
    const RecordBuilder& records, const ProducerOptions& producer,
    const SinkFactory& sink_factory, bool fail_on_invalid,
    const std::atomic<bool>& stop) {
  std::unique_ptr<RepublishProducer> p(
      new RepublishProducer(records, fail_on_invalid, stop));
  RepublishProducer* self = p.get();
  ASSIGN_OR_RETURN(p->sink_,
                   sink_factory(producer, [self](uint64_t seq, absl::Status s) {
                     if (s.ok()) {
                       ++self->acknowledged_count_;
                       if (seq < self->produced_ids_.size() &&
                           self->produced_ids_[seq].has_value()) {
                         const uint64_t id = *self->produced_ids_[seq];
                         if (self->transactional_) {
                           self->uncommitted_ids_.push_back(id);
                         } else {
                           self->acknowledged_->Add(id);
                         }
                       }
                     } else if (self->failure_.ok()) {
                       self->failure_ = std::move(s);
                     }
                   }));
  p->catalog_ = std::make_unique<TopicCatalog>(
      [sink = p->sink_.get()](const std::string& topic) {
        return sink->LookupTopic(topic, kTopicLookupTimeout);
      });
  if (!producer.transactional_id.empty()) {
    RETURN_IF_ERROR(p->sink_->InitTransactions(kTransactionTimeout));
    RETURN_IF_ERROR(p->sink_->BeginTransaction());
    p->transactional_ = true;
    p->transaction_open_ = true;
  }
  return p;
}

absl::Status RepublishProducer::Add(RowEvent row, Lsn republished_after) {
  current_id_.reset();
  if (auto* bad = std::get_if<InvalidEvent>(&row)) {
    bad->republished_after = republished_after;
    return AddInvalid(std::move(*bad));
  }
  OutboxEvent& event = std::get<OutboxEvent>(row);
  event.republished_after = republished_after;
  return AddEvent(event);
}

absl::Status RepublishProducer::AddReconciled(RowEvent row, Lsn confirmed) {
  current_id_.reset();
  if (auto* bad = std::get_if<InvalidEvent>(&row)) {
    bad->reconciled_before = confirmed;
    return AddInvalid(std::move(*bad));
  }
  OutboxEvent& event = std::get<OutboxEvent>(row);
  event.reconciled_before = confirmed;
  return AddEvent(event);
}

absl::Status RepublishProducer::AddEvent(OutboxEvent& event) {
  if (acknowledged_ != nullptr && !event.id.empty()) {
    current_id_ = AcknowledgedIds::Hash(event.id);
  }
  if (std::optional<InvalidEvent> bad = records_.Prepare(event)) {
    return AddInvalid(*std::move(bad));
  }
  KafkaRecord record = records_.Route(event);
  absl::Status topic = CheckTopic(record.topic);
  if (absl::IsCancelled(topic)) return topic;
  if (!topic.ok()) {
    return AddInvalid(RecordBuilder::Misrouted(event, record.topic, topic));
  }
  bool refused = false;
  absl::Status s = Produce(record, refused);
  if (refused) return AddInvalid(RecordBuilder::Unproducible(event, s));
  RETURN_IF_ERROR(s);
  ++result_.republished;
  return absl::OkStatus();
}

absl::Status RepublishProducer::AddInvalid(InvalidEvent bad) {
  if (fail_on_invalid_) {
    return absl::InvalidArgumentError(absl::StrCat(
        context_, ": invalid row: ", bad.reason, " (--on-invalid=fail)"));
  }
  spdlog::warn("{}: invalid event {}: {}", context_, Where(bad), bad.reason);
  KafkaRecord record = records_.DeadLetter(bad);
  absl::Status topic = CheckTopic(record.topic);
  if (absl::IsCancelled(topic)) return topic;
  if (!topic.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        context_, ": cannot dead-letter the invalid event ", Where(bad), " (",
        bad.reason, "): dead-letter topic: ", topic.message()));
  }
  bool refused = false;
  absl::Status s = Produce(record, refused);
  if (!s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat(context_, ": dead-lettering to ", record.topic,
                               " failed: ", s.message()));
  }
  ++result_.dead_lettered;
  return absl::OkStatus();
}

absl::Status RepublishProducer::Produce(const KafkaRecord& record,
                                        bool& refused) {
  for (;;) {
    absl::Status s = sink_->Produce(record, produced_);
    if (s.ok()) break;
    if (!absl::IsResourceExhausted(s)) {
      refused = true;
      return s;
    }
    sink_->Poll(kWaitInterval);
    RETURN_IF_ERROR(Healthy());
  }
  if (acknowledged_ != nullptr) produced_ids_.push_back(current_id_);
  ++produced_;
  sink_->Poll(absl::ZeroDuration());
  return Healthy();
}

absl::Status RepublishProducer::CheckTopic(const std::string& topic) {
  bool logged = false;
  for (;;) {
    absl::Status s = catalog_->Check(topic);
    if (!absl::IsUnavailable(s)) return s;
    if (!logged) {
      spdlog::warn("{}: {}; waiting", context_, std::string(s.message()));
      logged = true;
    }
    sink_->Poll(kWaitInterval);
    RETURN_IF_ERROR(Healthy());
  }
}

absl::Status RepublishProducer::Healthy() const {
  RETURN_IF_ERROR(sink_->fatal_error());
  if (!failure_.ok()) {
    return absl::AbortedError(
        absl::StrCat(context_, ": delivery failed: ", failure_.message()));
  }
  if (stop_.load()) {
    return absl::CancelledError(absl::StrCat("stopped during ", context_));
  }
  return absl::OkStatus();
}

absl::StatusOr<RepublishResult> RepublishProducer::Finish() {
  absl::Status s = WaitForReports();
  if (s.ok() && transactional_) s = CommitTransaction();
  if (!s.ok()) {
    AbortOpenTransaction();
    return s;
  }
  return result_;
}

void RepublishProducer::AbortOpenTransaction() {
  if (!transaction_open_ || !sink_->fatal_error().ok()) return;
  transaction_open_ = false;
  sink_->AbortTransaction(kTransactionTimeout).IgnoreError();
}

RepublishProducer::~RepublishProducer() { AbortOpenTransaction(); }

absl::Status RepublishProducer::WaitForReports() {
  while (acknowledged_count_ < produced_) {
    sink_->Poll(absl::Milliseconds(100));
    RETURN_IF_ERROR(Healthy());
  }
  return Healthy();
}

// Commits the transaction (a commit not known yet is asked again, until
// kTransactionTimeout); its ids join the acknowledged ones.
absl::Status RepublishProducer::CommitTransaction() {
  const absl::Time deadline = absl::Now() + kTransactionTimeout;
  for (;;) {
    absl::Status s = sink_->CommitTransaction(kWaitInterval * 10);
    if (s.ok()) break;
    if (!absl::IsUnavailable(s) || absl::Now() > deadline) {
      return absl::Status(s.code(), absl::StrCat(context_,
                                                 ": committing the Kafka "
                                                 "transaction failed: ",
                                                 s.message()));
    }
    RETURN_IF_ERROR(Healthy());
  }
  transaction_open_ = false;
  committed_ = true;
  if (acknowledged_ != nullptr) {
    for (uint64_t id : uncommitted_ids_) acknowledged_->Add(id);
  }
  uncommitted_ids_.clear();
  return absl::OkStatus();
}

absl::Status CheckRepublishable(PgConnection& conn, const RepublishOptions& o) {
  for (const QualifiedName& name : o.tables) {
    ASSIGN_OR_RETURN(
        OutboxTable table,
        OutboxTable::Load(conn, name, o.columns, "--on-slot-loss=republish: "));
    RETURN_IF_ERROR(BuildQuery(table, o).status());
  }
  return absl::OkStatus();
}

absl::StatusOr<RepublishResult> RepublishLostEvents(
    const RepublishOptions& o, const SinkFactory& sink_factory,
    const std::string& source, const PublisherState& from, Lsn new_slot_start,
    const std::atomic<bool>& stop) {
  ASSIGN_OR_RETURN(auto conn, PgConnection::Connect(
                                  o.conninfo, PgConnection::Mode::kNormal));
  // Every table is checked before anything is produced.
  std::vector<OutboxTable> tables;
  std::vector<std::string> selects;
  for (const QualifiedName& name : o.tables) {
    ASSIGN_OR_RETURN(OutboxTable table,
                     OutboxTable::Load(*conn, name, o.columns,
                                       "--on-slot-loss=republish: "));
    tables.push_back(std::move(table));
    ASSIGN_OR_RETURN(selects.emplace_back(), BuildQuery(tables.back(), o));
  }
  const std::string table_list = absl::StrJoin(
      o.tables, ", ",
      [](std::string* out, const auto& t) { out->append(t.ToString()); });

  RecordBuilder records(o.records);
  records.SetSource(source);
  ASSIGN_OR_RETURN(std::unique_ptr<RepublishProducer> producer,
                   RepublishProducer::Create(records, o.producer, sink_factory,
                                             o.fail_on_invalid, stop));
  producer->set_acknowledged(o.acknowledged);

  std::optional<std::string> time;
  if (from.commit_time_unix_us.has_value()) {
    time = absl::StrCat(*from.commit_time_unix_us);
  }
  if (!time.has_value() || !from.xmin_horizon.has_value()) {
    spdlog::warn(
        "republish: the recorded position {} has no {}: republishing every "
        "row of {}",
        from.last_ack.ToString(),
        time.has_value() ? "xmin horizon" : "commit time", table_list);
  }
  spdlog::info(
      "republish: rows of {} with xmin not older than {} or created_at at "
      "most {} before {} us",
      table_list, from.xmin_horizon.value_or("(unknown)"),
      absl::FormatDuration(o.margin), time.value_or("(unknown)"));
  // One snapshot for the whole scan, taken now (after the new slot exists).
  RETURN_IF_ERROR(
      conn->Exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").status());

  const Lsn position_lsn(new_slot_start.value() - 1);
  // One rank sequence over all the tables: positions stay unique.
  uint32_t rank = 0;
  const std::string fetch =
      absl::StrCat("FETCH ", o.fetch_size, " FROM outboxd_republish");
  std::vector<RowCell> cells;
  for (size_t t = 0; t < tables.size(); ++t) {
    const OutboxTable& table = tables[t];
    // outbox.table, as the stream names it.
    const std::string table_name =
        absl::StrCat(o.tables[t].schema, ".", o.tables[t].name);
    RETURN_IF_ERROR(
        conn->ExecParams(absl::StrCat("DECLARE outboxd_republish NO SCROLL "
                                      "CURSOR FOR ",
                                      selects[t]),
                         {time, absl::StrCat(absl::ToDoubleSeconds(o.margin)),
                          from.xmin_horizon})
            .status());
    while (true) {
      ASSIGN_OR_RETURN(PgResult rows, conn->Exec(fetch));
      const PGresult* r = rows.get();
      if (PQntuples(r) == 0) break;
      for (int i = 0; i < PQntuples(r); ++i) {
        cells.clear();
        table.AppendCells(r, i, /*first=*/0, &cells);
        RETURN_IF_ERROR(producer->Add(
            RowToEvent(cells, table.layout(), table.columns(),
                       RowOrigin{EventPosition{position_lsn, rank++},
                                 std::nullopt, 0, table_name}),
            from.last_ack));
      }
    }
    RETURN_IF_ERROR(conn->Exec("CLOSE outboxd_republish").status());
  }
  RETURN_IF_ERROR(conn->Exec("COMMIT").status());
  return producer->Finish();
}

}  // namespace outboxd
