// JsonReader: the one-pass JSON reader behind outbox/message_json.h. It
// reads JSON text with nlohmann's grammar (RFC 8259, UTF-8 checked as
// nlohmann's lexer checks it) and writes values as nlohmann's dump() does
// (no whitespace, nlohmann's string escapes). Every method returns false on
// anything it does not accept; the caller then gives up and takes the
// nlohmann path.
//
// Pure. A reader reads one text, which must outlive it; not thread-safe.
#ifndef OUTBOXD_OUTBOX_JSON_READER_H_
#define OUTBOXD_OUTBOX_JSON_READER_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace outboxd {

class JsonReader {
 public:
  // Deeper values go to the nlohmann path.
  static constexpr int kMaxDepth = 64;
  // Objects with more keys go to the nlohmann path (the duplicate-key check
  // here is quadratic).
  static constexpr size_t kMaxObjectKeys = 64;
  // Integers with more digits go to the nlohmann path: up to 18 digits fit in
  // int64 and, unsigned, in uint64, so nlohmann keeps them as integers and
  // prints them as they are.
  static constexpr size_t kMaxIntegerDigits = 18;

  explicit JsonReader(absl::string_view text)
      : p_(text.data()), end_(text.data() + text.size()) {}

  void SkipSpace() {
    while (p_ < end_ &&
           (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) {
      ++p_;
    }
  }
  bool AtEnd() const { return p_ == end_; }
  size_t Remaining() const { return static_cast<size_t>(end_ - p_); }
  bool Peek(char c) const { return p_ < end_ && *p_ == c; }
  bool Consume(char c) {
    if (!Peek(c)) return false;
    ++p_;
    return true;
  }
  // Consumes `word` when the text continues with it.
  bool ConsumeWord(absl::string_view word);

  // A string token at the current position. *raw is the text between the
  // quotes; *escaped says whether it has a backslash escape. With `decoded`
  // set, the string's value is written there (only when escaped: otherwise
  // the value is *raw).
  bool String(absl::string_view* raw, bool* escaped, std::string* decoded);

  // One value. With `out` set, appends it as nlohmann's dump() writes it.
  bool Value(std::string* out, int depth);

 private:
  bool Literal(absl::string_view word, std::string* out);

  // Written out (`out` set): integers only (nlohmann prints a double in its
  // own shortest form), without "-0" (printed "0") and short enough to stay
  // integers: those are printed as they are written. Only checked: also a
  // fraction, but no exponent (a double out of range is nlohmann's error).
  bool Number(std::string* out);

  bool Array(std::string* out, int depth);

  bool Object(std::string* out, int depth);

  // A backslash escape at the current position, appended to `decoded`.
  bool Escape(std::string* decoded);

  bool Hex4(uint32_t* cp);

  // One well-formed UTF-8 sequence of 2 to 4 bytes (no overlong forms, no
  // surrogates, nothing above U+10FFFF), as nlohmann's lexer requires.
  bool Utf8Sequence();

  const char* p_;
  const char* end_;
  const char* run_start_ = nullptr;  // String: the plain run after an escape
  std::string scratch_;              // Value: a decoded string
};

}  // namespace outboxd

#endif  // OUTBOXD_OUTBOX_JSON_READER_H_
