#include "pipeline/republisher.h"

#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "pg/connection.h"
#include "sources/outbox_poller.h"

namespace outboxd {
namespace {

constexpr uint32_t kByteaOid = 17;
// A recorded xmin horizon further back than this (in transaction ids) cannot
// be compared with 32-bit row xmins: every row is taken instead.
constexpr int64_t kMaxHorizonAge = 2000000000;

std::optional<std::string> Cell(const PGresult* r, int row, int col) {
  if (PQgetisnull(r, row, col)) return std::nullopt;
  return std::string(PQgetvalue(r, row, col), PQgetlength(r, row, col));
}

// Builds the SELECT (column order: PolledRowText minus seq, then
// depends_on). $1 commit time (unix us), $2 margin (s), $3 xmin horizon (xid8).
absl::StatusOr<std::string> BuildQuery(PgConnection& conn,
                                       const RepublishOptions& o,
                                       bool* payload_is_bytea) {
  ASSIGN_OR_RETURN(std::string schema, conn.QuoteIdentifier(o.table.schema));
  ASSIGN_OR_RETURN(std::string name, conn.QuoteIdentifier(o.table.name));
  const std::string table = absl::StrCat(schema, ".", name);
  ASSIGN_OR_RETURN(
      PgResult cols,
      conn.ExecParams("SELECT attname::text, atttypid::int FROM pg_attribute "
                      "WHERE attrelid = $1::regclass AND attnum > 0 "
                      "AND NOT attisdropped",
                      {table}));
  absl::flat_hash_map<std::string, uint32_t> types;
  for (int i = 0; i < PQntuples(cols.get()); ++i) {
    uint32_t oid = 0;
    (void)absl::SimpleAtoi(PQgetvalue(cols.get(), i, 1), &oid);
    types[PQgetvalue(cols.get(), i, 0)] = oid;
  }
  auto require = [&](const std::string& column,
                     const std::string& why) -> absl::StatusOr<std::string> {
    if (!types.contains(column)) {
      return absl::FailedPreconditionError(
          absl::StrCat("--on-slot-loss=republish: table ", o.table.ToString(),
                       " has no column '", column, "' (", why, ")"));
    }
    return conn.QuoteIdentifier(column);
  };
  auto optional =
      [&](const std::string& column) -> absl::StatusOr<std::string> {
    if (column.empty() || !types.contains(column)) return std::string();
    return conn.QuoteIdentifier(column);
  };
  ASSIGN_OR_RETURN(
      std::string created,
      require(o.created_at_column,
              "timestamptz NOT NULL DEFAULT now(), as in sql/outbox.sql: it "
              "finds the rows that may have committed after the last "
              "acknowledged event"));
  ASSIGN_OR_RETURN(std::string id, require(o.columns.id, "--column-id"));
  ASSIGN_OR_RETURN(
      std::string aggregate_type,
      require(o.columns.aggregate_type, "--column-aggregate-type"));
  ASSIGN_OR_RETURN(std::string aggregate_id,
                   require(o.columns.aggregate_id, "--column-aggregate-id"));
  ASSIGN_OR_RETURN(std::string type, require(o.columns.type, "--column-type"));
  ASSIGN_OR_RETURN(std::string payload,
                   require(o.columns.payload, "--column-payload"));
  ASSIGN_OR_RETURN(std::string headers, optional(o.columns.headers));
  ASSIGN_OR_RETURN(std::string depends_on, optional(o.columns.depends_on));
  ASSIGN_OR_RETURN(std::string seq, optional(o.seq_column));
  *payload_is_bytea = types[o.columns.payload] == kByteaOid;
  return absl::StrCat(
      "SELECT ", id, "::text, ", aggregate_type, "::text, ", aggregate_id,
      "::text, ", type, "::text, ", payload, *payload_is_bytea ? "" : "::text",
      ", ", headers.empty() ? "NULL::text" : absl::StrCat(headers, "::text"),
      ", (extract(epoch FROM ", created, ") * 1000)::bigint::text, ",
      depends_on.empty()
          ? "NULL::text"
          : absl::StrCat("array_to_string(", depends_on, "::text[], ',')"),
      " FROM ", table, " WHERE $1::bigint IS NULL OR $3::xid8 IS NULL OR ",
      created,
      " >= to_timestamp(0) + $1::bigint * interval '1 microsecond' - "
      "make_interval(secs => $2::double precision) OR "
      "age(xmin) <= age(($3::xid8::text::numeric % 4294967296)::text::xid) OR "
      "pg_snapshot_xmax(pg_current_snapshot())::text::numeric - "
      "$3::xid8::text::numeric >= ",
      kMaxHorizonAge, " ORDER BY ", created,
      seq.empty() ? "" : absl::StrCat(", ", table, ".", seq));
}

}  // namespace

absl::StatusOr<RepublishResult> RepublishLostEvents(
    const RepublishOptions& o, const PublisherState& from, Lsn new_slot_start,
    const std::atomic<bool>& stop) {
  ASSIGN_OR_RETURN(auto conn, PgConnection::Connect(
                                  o.conninfo, PgConnection::Mode::kNormal));
  bool payload_is_bytea = false;
  ASSIGN_OR_RETURN(std::string select, BuildQuery(*conn, o, &payload_is_bytea));

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
        time.has_value() ? "xmin horizon" : "commit time", o.table.ToString());
  }
  spdlog::info(
      "republish: rows of {} with xmin not older than {} or created_at at "
      "most {} before {} us",
      o.table.ToString(), from.xmin_horizon.value_or("(unknown)"),
      absl::FormatDuration(o.margin), time.value_or("(unknown)"));
  // One snapshot for the whole scan, taken now (after the new slot exists).
  RETURN_IF_ERROR(
      conn->Exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").status());
  RETURN_IF_ERROR(
      conn->ExecParams(absl::StrCat("DECLARE outboxd_republish NO SCROLL "
                                    "CURSOR FOR ",
                                    select),
                       {time, absl::StrCat(absl::ToDoubleSeconds(o.margin)),
                        from.xmin_horizon})
          .status());

  const Lsn position_lsn(new_slot_start.value() - 1);
  RepublishResult result;
  uint64_t produced = 0;
  const std::string fetch =
      absl::StrCat("FETCH ", o.fetch_size, " FROM outboxd_republish");
  while (true) {
    ASSIGN_OR_RETURN(PgResult rows, conn->Exec(fetch));
    const PGresult* r = rows.get();
    if (PQntuples(r) == 0) break;
    for (int i = 0; i < PQntuples(r); ++i) {
      PolledRowText t{std::string("0"), Cell(r, i, 0), Cell(r, i, 1),
                      Cell(r, i, 2),    Cell(r, i, 3), Cell(r, i, 4),
                      Cell(r, i, 5),    Cell(r, i, 6)};
      PolledRow row = RowToEvent(t, payload_is_bytea);
      KafkaRecord record;
      OutboxEvent event;
      const uint32_t rank = static_cast<uint32_t>(produced);
      if (row.event.has_value()) {
        event = *std::move(row.event);
        event.table_seq.reset();
        event.position = EventPosition{position_lsn, rank};
        event.republished_after = from.last_ack;
        if (auto deps = Cell(r, i, 7); deps.has_value() && !deps->empty()) {
          std::vector<std::string> ids = absl::StrSplit(*deps, ',');
          event.depends_on = std::move(ids);
        }
        if (o.value_format != ValueFormat::kPayload) {
          event.payload = EncodeValue(event, o.value_format);
        }
        record = Route(event, o.router);
        ++result.republished;
      } else {
        if (o.fail_on_invalid) {
          return absl::InvalidArgumentError(
              absl::StrCat("republish: invalid row: ", row.invalid_reason,
                           " (--on-invalid=fail)"));
        }
        record.topic = o.dlq_topic;
        record.key = row.aggregate_id;
        record.value = absl::string_view(row.content);
        record.headers = {
            {"outbox.error", row.invalid_reason},
            {std::string(kHeaderLsn), absl::StrCat(position_lsn.value())},
            {std::string(kHeaderIndex), absl::StrCat(rank)},
            {std::string(kHeaderRepublished),
             absl::StrCat(from.last_ack.value())},
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
