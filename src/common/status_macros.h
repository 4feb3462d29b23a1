// RETURN_IF_ERROR and ASSIGN_OR_RETURN for absl::Status / absl::StatusOr.
// Debian's abseil (20220623) ships no status macros, so they live here once.
#ifndef OUTBOXD_COMMON_STATUS_MACROS_H_
#define OUTBOXD_COMMON_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define OUTBOXD_CONCAT_INNER_(a, b) a##b
#define OUTBOXD_CONCAT_(a, b) OUTBOXD_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing
// function when it is not OK.
#define RETURN_IF_ERROR(expr)                          \
  do {                                                 \
    ::absl::Status outboxd_status_ = (expr);           \
    if (!outboxd_status_.ok()) return outboxd_status_; \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): evaluates `expr` (an absl::StatusOr<T>),
// returns its status when not OK, otherwise move-assigns the value to `lhs`
// (which may be a declaration such as `auto x`).
#define ASSIGN_OR_RETURN(lhs, expr)                                            \
  OUTBOXD_ASSIGN_OR_RETURN_IMPL_(OUTBOXD_CONCAT_(outboxd_sor_, __LINE__), lhs, \
                                 expr)

#define OUTBOXD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return std::move(tmp).status();       \
  lhs = std::move(tmp).value()

#endif  // OUTBOXD_COMMON_STATUS_MACROS_H_
