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

absl::StatusOr<RepublishResult> RepublishLostEvents(
    const RepublishOptions& o, const PublisherState& from, Lsn new_slot_start,
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

  uint64_t acknowledged = 0;
  absl::Status failure;
  ASSIGN_OR_RETURN(
      auto producer,
      KafkaProducer::Create(o.producer, [&](uint64_t, absl::Status s) {
        if (s.ok()) {
          ++acknowledged;
        } else if (failure.ok()) {
          failure = std::move(s);
        }
      }));

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
  RepublishResult result;
  // One rank sequence over all the tables: positions stay unique.
  uint64_t produced = 0;
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
        const uint32_t rank = static_cast<uint32_t>(produced);
        cells.clear();
        table.AppendCells(r, i, /*first=*/0, &cells);
        RowEvent row = RowToEvent(cells, table.layout(), table.columns(),
                                  RowOrigin{EventPosition{position_lsn, rank},
                                            std::nullopt, 0, table_name});
        KafkaRecord record;
        OutboxEvent event;
        if (auto* decoded = std::get_if<OutboxEvent>(&row)) {
          event = std::move(*decoded);
          event.republished_after = from.last_ack;
          if (o.value_format != ValueFormat::kPayload) {
            event.payload = EncodeValue(event, o.value_format);
          }
          record = Route(event, o.router);
          ++result.republished;
        } else {
          const InvalidEvent& bad = std::get<InvalidEvent>(row);
          if (o.fail_on_invalid) {
            return absl::InvalidArgumentError(
                absl::StrCat("republish: invalid row: ", bad.reason,
                             " (--on-invalid=fail)"));
          }
          record.topic = o.dlq_topic;
          record.key = bad.aggregate_id;
          record.value = absl::string_view(bad.content);
          record.headers = {
              {"outbox.error", bad.reason},
              {std::string(kHeaderLsn), absl::StrCat(position_lsn.value())},
              {std::string(kHeaderIndex), absl::StrCat(rank)},
              {std::string(kHeaderRepublished),
               absl::StrCat(from.last_ack.value())},
              {std::string(kHeaderTable), table_name},
          };
          ++result.dead_lettered;
        }
        while (true) {
          absl::Status s = producer->Produce(record, produced);
          if (s.ok()) break;
          if (!absl::IsResourceExhausted(s)) {
            return absl::Status(s.code(),
                                absl::StrCat("republish: ", s.message()));
          }
          producer->Poll(absl::Milliseconds(50));
          if (stop.load())
            return absl::CancelledError("stopped during republish");
        }
        ++produced;
        producer->Poll(absl::ZeroDuration());
        RETURN_IF_ERROR(producer->fatal_error());
        RETURN_IF_ERROR(failure);
      }
    }
    RETURN_IF_ERROR(conn->Exec("CLOSE outboxd_republish").status());
  }
  RETURN_IF_ERROR(conn->Exec("COMMIT").status());
  while (acknowledged < produced) {
    producer->Poll(absl::Milliseconds(100));
    RETURN_IF_ERROR(producer->fatal_error());
    if (!failure.ok()) {
      return absl::AbortedError(
          absl::StrCat("republish: delivery failed: ", failure.message()));
    }
    if (stop.load()) return absl::CancelledError("stopped during republish");
  }
  return result;
}

}  // namespace outboxd
