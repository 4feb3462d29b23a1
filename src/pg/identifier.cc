#include "pg/identifier.h"

#include <algorithm>
#include <iterator>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace outboxd {
namespace {

// Keywords that cannot be used as a bare table or schema name (PostgreSQL
// appendix C, "reserved" and "reserved (can be function or type)").
constexpr absl::string_view kReservedKeywords[] = {
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
};

bool IsIdentStart(unsigned char c) {
  return absl::ascii_isalpha(c) || c == '_' || c >= 0x80;
}

bool IsIdentChar(unsigned char c) {
  return IsIdentStart(c) || absl::ascii_isdigit(c) || c == '$';
}

bool NeedsQuoting(absl::string_view ident) {
  if (ident.empty() || !IsIdentStart(ident[0]) ||
      absl::ascii_isupper(static_cast<unsigned char>(ident[0]))) {
    return true;
  }
  for (char c : ident) {
    unsigned char u = static_cast<unsigned char>(c);
    if (!IsIdentChar(u) || absl::ascii_isupper(u) || u >= 0x80) return true;
  }
  return std::find(std::begin(kReservedKeywords), std::end(kReservedKeywords),
                   ident) != std::end(kReservedKeywords);
}

// `ident` as PostgreSQL's quote_ident writes it: bare when it reads back as
// itself, else double-quoted with inner quotes doubled.
std::string QuoteForDisplay(absl::string_view ident) {
  if (!NeedsQuoting(ident)) return std::string(ident);
  std::string out = "\"";
  for (char c : ident) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

absl::Status BadName(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("invalid table name '", text, "': ", why));
}

}  // namespace

std::string QuoteIdent(absl::string_view ident) {
  return QuoteForDisplay(ident);
}

std::string QualifiedName::ToString() const {
  return absl::StrCat(QuoteForDisplay(schema), ".", QuoteForDisplay(name));
}

absl::StatusOr<QualifiedName> ParseQualifiedName(absl::string_view text) {
  std::vector<std::string> parts;
  size_t i = 0;
  const size_t n = text.size();
  auto skip_space = [&] {
    while (i < n && absl::ascii_isspace(static_cast<unsigned char>(text[i]))) {
      ++i;
    }
  };
  skip_space();
  while (true) {
    std::string part;
    if (i < n && text[i] == '"') {
      ++i;
      bool closed = false;
      while (i < n) {
        if (text[i] == '"') {
          if (i + 1 < n && text[i + 1] == '"') {
            part.push_back('"');
            i += 2;
          } else {
            ++i;
            closed = true;
            break;
          }
        } else {
          part.push_back(text[i++]);
        }
      }
      if (!closed) return BadName(text, "unterminated quoted identifier");
      if (part.empty()) return BadName(text, "empty quoted identifier");
      if (part.find('\0') != std::string::npos) {
        return BadName(text, "identifier contains a NUL byte");
      }
    } else if (i < n && IsIdentStart(static_cast<unsigned char>(text[i]))) {
      while (i < n && IsIdentChar(static_cast<unsigned char>(text[i]))) {
        part.push_back(
            absl::ascii_tolower(static_cast<unsigned char>(text[i])));
        ++i;
      }
    } else if (i >= n || text[i] == '.') {
      return BadName(text, "empty name part");
    } else {
      return BadName(
          text, absl::StrCat("unexpected character '", text.substr(i, 1), "'"));
    }
    if (part.size() > kMaxIdentifierBytes) {
      return BadName(text, absl::StrCat("a part is longer than ",
                                        kMaxIdentifierBytes, " bytes"));
    }
    parts.push_back(std::move(part));
    skip_space();
    if (i >= n) break;
    if (text[i] != '.') {
      return BadName(
          text, absl::StrCat("unexpected '", text.substr(i), "' after a name"));
    }
    ++i;
    skip_space();
  }
  if (parts.size() > 2) {
    return BadName(text, "expected [schema.]table, got more than two parts");
  }
  QualifiedName result;
  if (parts.size() == 2) {
    result.schema = std::move(parts[0]);
    result.name = std::move(parts[1]);
  } else {
    result.name = std::move(parts[0]);
  }
  return result;
}

absl::StatusOr<std::vector<QualifiedName>> ParseQualifiedNameList(
    absl::string_view text) {
  std::vector<QualifiedName> names;
  size_t start = 0;
  bool quoted = false;
  for (size_t i = 0; i <= text.size(); ++i) {
    if (i < text.size()) {
      // A doubled quote inside a quoted part toggles twice: no effect.
      if (text[i] == '"') quoted = !quoted;
      if (quoted || text[i] != ',') continue;
    }
    absl::string_view element = text.substr(start, i - start);
    start = i + 1;
    if (absl::StripAsciiWhitespace(element).empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid table list '", text, "': empty element"));
    }
    ASSIGN_OR_RETURN(QualifiedName name, ParseQualifiedName(element));
    if (std::find(names.begin(), names.end(), name) != names.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid table list '", text, "': ", name.ToString(), " twice"));
    }
    names.push_back(std::move(name));
  }
  return names;
}

std::string TextArrayLiteral(const std::vector<std::string>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char c : items[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

}  // namespace outboxd
