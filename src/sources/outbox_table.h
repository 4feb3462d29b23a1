// OutboxTable: the outbox table as the SQL readers see it (the polling
// sources and the republisher after a lost slot).
//
// Load reads the table's columns once and checks the required outbox
// columns, with an error that names the missing one and its flag. It then
// gives the quoted names for building statements, one SELECT list of the
// outbox columns as text, and the RowCells of a result row in that list's
// order, for RowToEvent (outbox/row_to_event.h).
//
// A plain value; no connection is kept.
#ifndef OUTBOXD_SOURCES_OUTBOX_TABLE_H_
#define OUTBOXD_SOURCES_OUTBOX_TABLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "outbox/row_to_event.h"
#include "pg/connection.h"
#include "pg/identifier.h"

namespace outboxd {

class OutboxTable {
 public:
  // Reads `table`'s columns. kFailedPrecondition when the table or one of
  // the required outbox columns (id, aggregate type, aggregate id, type,
  // payload) is missing; `context` prefixes every error of this object
  // (e.g. "--on-slot-loss=republish: ").
  static absl::StatusOr<OutboxTable> Load(PgConnection& conn,
                                          const QualifiedName& table,
                                          const OutboxColumns& columns,
                                          absl::string_view context = "");

  // "schema"."name", quoted.
  const std::string& quoted_name() const { return quoted_name_; }
  // The quoted name of a column that must exist; kFailedPrecondition
  // "table T has no column 'c' (why)" otherwise.
  absl::StatusOr<std::string> Require(const std::string& column,
                                      absl::string_view why) const;
  // The quoted name of a column, "" when `column` is "" or absent.
  std::string Optional(const std::string& column) const;

  // The outbox columns present (id, aggregate type, aggregate id, type,
  // payload, then headers, depends_on and content_type when present), as
  // text, comma
  // separated: select_width() result columns.
  const std::string& select_list() const { return select_list_; }
  int select_width() const { return static_cast<int>(cell_names_.size()); }
  // Appends the cells of result row `row` whose select_list() starts at
  // result column `first`. The cells point into `result`.
  void AppendCells(const PGresult* result, int row, int first,
                   std::vector<RowCell>* cells) const;
  // Where the outbox columns are among those cells.
  const OutboxRowLayout& layout() const { return layout_; }
  const OutboxColumns& columns() const { return columns_; }

 private:
  struct Column {
    uint32_t type_oid = 0;
    std::string quoted;
  };
  OutboxTable() = default;

  std::string context_;
  QualifiedName table_;
  OutboxColumns columns_;
  std::string quoted_name_;
  absl::flat_hash_map<std::string, Column> by_name_;
  std::vector<std::string> cell_names_;
  OutboxRowLayout layout_;
  std::string select_list_;
};

}  // namespace outboxd

#endif  // OUTBOXD_SOURCES_OUTBOX_TABLE_H_
