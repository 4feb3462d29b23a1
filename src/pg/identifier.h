// Identifiers as PostgreSQL reads and writes them: schema-qualified table
// names from the command line, parsed and printed back; and the text[]
// literal that passes a list of strings as one query parameter.
//
// Pure string handling, no libpq: the outbox library (which names its
// table) uses it without linking the database client.
#ifndef OUTBOXD_PG_IDENTIFIER_H_
#define OUTBOXD_PG_IDENTIFIER_H_

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace outboxd {

// NAMEDATALEN - 1: PostgreSQL truncates longer identifiers, which would make
// the name we look up differ from the one the server uses.
inline constexpr size_t kMaxIdentifierBytes = 63;

// `ident` as PostgreSQL's quote_ident writes it: bare when it reads back as
// itself, else double-quoted with inner quotes doubled (for SQL shown to
// the user, e.g. the statement a log line asks to run).
std::string QuoteIdent(absl::string_view ident);

// A schema-qualified table name as given on the command line: `tbl`,
// `schema.tbl`, or with double-quoted parts (`"my schema"."a""b"`).
// Unquoted parts are folded to lower case, as PostgreSQL does.
struct QualifiedName {
  std::string schema = "public";
  std::string name;

  std::string ToString() const;  // schema.name, quoted where needed

  friend bool operator==(const QualifiedName&, const QualifiedName&) = default;
};
absl::StatusOr<QualifiedName> ParseQualifiedName(absl::string_view text);

// A comma-separated list of such names (`a, app."b,c"`): commas inside a
// quoted part belong to the name. kInvalidArgument for an empty list, an
// empty element, a bad name or a name given twice.
absl::StatusOr<std::vector<QualifiedName>> ParseQualifiedNameList(
    absl::string_view text);

// A PostgreSQL text[] literal of `items`, every element quoted and '"' and
// '\\' escaped: {"a","b\"c"} (for `= ANY($1::text[])`).
std::string TextArrayLiteral(const std::vector<std::string>& items);

}  // namespace outboxd

#endif  // OUTBOXD_PG_IDENTIFIER_H_
