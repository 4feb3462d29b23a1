// Utf8: the one strict UTF-8 check (value formats, CloudEvents).
//
// Pure, thread-safe.
#ifndef OUTBOXD_COMMON_UTF8_H_
#define OUTBOXD_COMMON_UTF8_H_

#include "absl/strings/string_view.h"

namespace outboxd {

// True when `s` is UTF-8: no overlong forms, no surrogates, at most
// U+10FFFF, no truncated sequence.
bool IsValidUtf8(absl::string_view s);

}  // namespace outboxd

#endif  // OUTBOXD_COMMON_UTF8_H_
