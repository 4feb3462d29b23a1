#include "sources/outbox_table.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace outboxd {

absl::StatusOr<OutboxTable> OutboxTable::Load(PgConnection& conn,
                                              const QualifiedName& table,
                                              const OutboxColumns& columns,
                                              absl::string_view context) {
  OutboxTable t;
  t.context_ = std::string(context);
  t.table_ = table;
  t.columns_ = columns;
  ASSIGN_OR_RETURN(std::string schema, conn.QuoteIdentifier(table.schema));
  ASSIGN_OR_RETURN(std::string name, conn.QuoteIdentifier(table.name));
  t.quoted_name_ = absl::StrCat(schema, ".", name);
  ASSIGN_OR_RETURN(
      PgResult cols,
      conn.ExecParams("SELECT attname::text, atttypid::int, "
                      "quote_ident(attname) FROM pg_attribute "
                      "WHERE attrelid = $1::regclass AND attnum > 0 "
                      "AND NOT attisdropped",
                      {t.quoted_name_}));
  for (int i = 0; i < PQntuples(cols.get()); ++i) {
    Column c;
    if (!absl::SimpleAtoi(PQgetvalue(cols.get(), i, 1), &c.type_oid)) {
      return absl::InternalError("pg_attribute.atttypid is not a number");
    }
    c.quoted = PQgetvalue(cols.get(), i, 2);
    t.by_name_.emplace(PQgetvalue(cols.get(), i, 0), std::move(c));
  }

  struct Wanted {
    const std::string& name;
    const char* flag;  // nullptr: optional
  };
  for (const Wanted& w :
       {Wanted{columns.id, "--column-id"},
        Wanted{columns.aggregate_type, "--column-aggregate-type"},
        Wanted{columns.aggregate_id, "--column-aggregate-id"},
        Wanted{columns.type, "--column-type"},
        Wanted{columns.payload, "--column-payload"},
        Wanted{columns.headers, nullptr}, Wanted{columns.depends_on, nullptr},
        Wanted{columns.content_type, nullptr}}) {
    std::string quoted;
    if (w.flag != nullptr) {
      ASSIGN_OR_RETURN(quoted, t.Require(w.name, w.flag));
    } else {
      quoted = t.Optional(w.name);
      if (quoted.empty()) continue;
    }
    // Text output for all; bytea's is its hex form, decoded by RowToEvent.
    absl::StrAppend(&t.select_list_, t.cell_names_.empty() ? "" : ", ",
                    t.quoted_name_, ".", quoted, "::text");
    t.cell_names_.push_back(w.name);
  }
  t.layout_ = LocateOutboxColumns(t.cell_names_, columns);
  SetPayloadType(t.by_name_.at(columns.payload).type_oid, &t.layout_);
  return t;
}

absl::StatusOr<std::string> OutboxTable::Require(const std::string& column,
                                                 absl::string_view why) const {
  auto it = by_name_.find(column);
  if (column.empty() || it == by_name_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat(context_, "table ", table_.ToString(), " has no column '",
                     column, "' (", why, ")"));
  }
  return it->second.quoted;
}

std::string OutboxTable::Optional(const std::string& column) const {
  auto it = by_name_.find(column);
  if (column.empty() || it == by_name_.end()) return std::string();
  return it->second.quoted;
}

void OutboxTable::AppendCells(const PGresult* result, int row, int first,
                              std::vector<RowCell>* cells) const {
  for (size_t i = 0; i < cell_names_.size(); ++i) {
    const int col = first + static_cast<int>(i);
    RowCell& cell = cells->emplace_back();
    cell.name = cell_names_[i];
    if (!PQgetisnull(result, row, col)) {
      cell.text = absl::string_view(PQgetvalue(result, row, col),
                                    PQgetlength(result, row, col));
    }
  }
}

}  // namespace outboxd
