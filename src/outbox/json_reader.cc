#include "outbox/json_reader.h"

#include <cstring>

namespace outboxd {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Appends decoded string bytes as nlohmann's dump() escapes them
// (ensure_ascii off): the two-character escapes for \b \t \n \f \r " and \,
// \u00xx (lower-case hex) for the other control characters, every other
// byte as it is.
void AppendEscaped(absl::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case 0x08:
        out->append("\\b");
        break;
      case 0x09:
        out->append("\\t");
        break;
      case 0x0A:
        out->append("\\n");
        break;
      case 0x0C:
        out->append("\\f");
        break;
      case 0x0D:
        out->append("\\r");
        break;
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      default:
        if (c < 0x20) {
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 0xF]);
        } else {
          out->push_back(ch);
        }
    }
  }
}

// True when none of the 8 bytes at p is a control character (< 0x20), '"',
// '\\' or a non-ASCII byte. For an ASCII byte x, x - 0x20 and (x ^ c) - 1
// have the high bit set only when x < 0x20 or x == c; a borrow from a lower
// byte only happens when that lower byte is flagged itself, so any such
// byte makes the result false (a flag above it is harmless: the caller's
// byte-by-byte loop then decides exactly).
bool PlainAscii8(const char* p) {
  constexpr uint64_t kOnes = 0x0101010101010101ULL;
  constexpr uint64_t kHigh = 0x8080808080808080ULL;
  uint64_t w;
  std::memcpy(&w, p, 8);
  const uint64_t special = (w - kOnes * 0x20) |              // < 0x20
                           ((w ^ (kOnes * '"')) - kOnes) |   // '"'
                           ((w ^ (kOnes * '\\')) - kOnes) |  // '\\'
                           w;                                // >= 0x80
  return (special & kHigh) == 0;
}

}  // namespace

bool JsonReader::ConsumeWord(absl::string_view word) {
  if (static_cast<size_t>(end_ - p_) < word.size() ||
      absl::string_view(p_, word.size()) != word) {
    return false;
  }
  p_ += word.size();
  return true;
}

bool JsonReader::String(absl::string_view* raw, bool* escaped,
                        std::string* decoded) {
  if (!Consume('"')) return false;
  const char* start = p_;
  *escaped = false;
  for (;;) {
    // The common run: printable ASCII, eight bytes at a time while no
    // byte in them can end it, then byte by byte.
    while (end_ - p_ >= 8 && PlainAscii8(p_)) p_ += 8;
    while (p_ < end_) {
      const auto c = static_cast<unsigned char>(*p_);
      if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) break;
      ++p_;
    }
    if (p_ >= end_) return false;
    const auto c = static_cast<unsigned char>(*p_);
    if (c == '"') {
      if (decoded != nullptr && *escaped) {
        // Flush the last plain run.
        decoded->append(run_start_, p_ - run_start_);
      }
      *raw = absl::string_view(start, p_ - start);
      ++p_;
      return true;
    }
    if (c < 0x20) return false;  // a raw control character
    if (c >= 0x80) {
      if (!Utf8Sequence()) return false;
      continue;
    }
    // A backslash.
    if (decoded != nullptr) {
      if (!*escaped) {
        decoded->assign(start, p_ - start);
      } else {
        decoded->append(run_start_, p_ - run_start_);
      }
    }
    *escaped = true;
    if (!Escape(decoded)) return false;
    run_start_ = p_;
  }
}

bool JsonReader::Value(std::string* out, int depth) {
  if (p_ >= end_) return false;
  switch (*p_) {
    case '{':
      return Object(out, depth);
    case '[':
      return Array(out, depth);
    case '"': {
      absl::string_view raw;
      bool escaped = false;
      if (out == nullptr) return String(&raw, &escaped, nullptr);
      if (!String(&raw, &escaped, &scratch_)) return false;
      out->push_back('"');
      if (escaped) {
        AppendEscaped(scratch_, out);
      } else {
        out->append(raw.data(), raw.size());  // nothing to escape
      }
      out->push_back('"');
      return true;
    }
    case 't':
      return Literal("true", out);
    case 'f':
      return Literal("false", out);
    case 'n':
      return Literal("null", out);
    default:
      return Number(out);
  }
}

bool JsonReader::Literal(absl::string_view word, std::string* out) {
  if (!ConsumeWord(word)) return false;
  if (out != nullptr) out->append(word.data(), word.size());
  return true;
}

bool JsonReader::Number(std::string* out) {
  const char* start = p_;
  const bool negative = Consume('-');
  const char* digits = p_;
  if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
  if (*p_ == '0') {
    ++p_;
  } else {
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
  }
  if (static_cast<size_t>(p_ - digits) > kMaxIntegerDigits) return false;
  if (p_ < end_ && *p_ >= '0' && *p_ <= '9') return false;  // 0 then digits
  if (p_ < end_ && *p_ == '.') {
    if (out != nullptr) return false;
    ++p_;
    const char* fraction = p_;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    if (p_ == fraction) return false;
  } else if (out != nullptr && negative && p_ - digits == 1 && *digits == '0') {
    return false;  // -0
  }
  if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) return false;
  if (out != nullptr) out->append(start, p_ - start);
  return true;
}

bool JsonReader::Array(std::string* out, int depth) {
  if (depth >= kMaxDepth) return false;
  ++p_;  // [
  if (out != nullptr) out->push_back('[');
  SkipSpace();
  if (!Consume(']')) {
    for (;;) {
      SkipSpace();
      if (!Value(out, depth + 1)) return false;
      SkipSpace();
      if (Consume(']')) break;
      if (!Consume(',')) return false;
      if (out != nullptr) out->push_back(',');
    }
  }
  if (out != nullptr) out->push_back(']');
  return true;
}

bool JsonReader::Object(std::string* out, int depth) {
  if (depth >= kMaxDepth) return false;
  ++p_;  // {
  if (out != nullptr) out->push_back('{');
  SkipSpace();
  if (!Consume('}')) {
    // Raw key texts so far, for the duplicate check (nlohmann keeps the
    // first position and the last value of a duplicate key).
    // Plain arrays: left uninitialised, only the first n are read.
    const char* key_data[kMaxObjectKeys];
    size_t key_size[kMaxObjectKeys];
    size_t n = 0;
    for (;;) {
      SkipSpace();
      absl::string_view key;
      bool escaped = false;
      if (!String(&key, &escaped, nullptr) || escaped) return false;
      if (n == kMaxObjectKeys) return false;
      for (size_t i = 0; i < n; ++i) {
        if (absl::string_view(key_data[i], key_size[i]) == key) return false;
      }
      key_data[n] = key.data();
      key_size[n] = key.size();
      ++n;
      SkipSpace();
      if (!Consume(':')) return false;
      SkipSpace();
      if (out != nullptr) {
        out->push_back('"');
        out->append(key.data(), key.size());
        out->append("\":");
      }
      if (!Value(out, depth + 1)) return false;
      SkipSpace();
      if (Consume('}')) break;
      if (!Consume(',')) return false;
      if (out != nullptr) out->push_back(',');
    }
  }
  if (out != nullptr) out->push_back('}');
  return true;
}

bool JsonReader::Escape(std::string* decoded) {
  ++p_;  // the backslash
  if (p_ >= end_) return false;
  char simple = 0;
  switch (*p_) {
    case '"':
      simple = '"';
      break;
    case '\\':
      simple = '\\';
      break;
    case '/':
      simple = '/';
      break;
    case 'b':
      simple = '\b';
      break;
    case 'f':
      simple = '\f';
      break;
    case 'n':
      simple = '\n';
      break;
    case 'r':
      simple = '\r';
      break;
    case 't':
      simple = '\t';
      break;
    case 'u':
      break;
    default:
      return false;
  }
  ++p_;
  if (simple != 0) {
    if (decoded != nullptr) decoded->push_back(simple);
    return true;
  }
  uint32_t cp = 0;
  if (!Hex4(&cp)) return false;
  if (cp >= 0xD800 && cp <= 0xDBFF) {
    // A high surrogate: a low one must follow.
    uint32_t low = 0;
    if (!ConsumeWord("\\u") || !Hex4(&low) || low < 0xDC00 || low > 0xDFFF) {
      return false;
    }
    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
  } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
    return false;  // a lone low surrogate
  }
  if (decoded != nullptr) AppendUtf8(cp, decoded);
  return true;
}

bool JsonReader::Hex4(uint32_t* cp) {
  if (end_ - p_ < 4) return false;
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    const int h = HexValue(p_[i]);
    if (h < 0) return false;
    v = v * 16 + static_cast<uint32_t>(h);
  }
  p_ += 4;
  *cp = v;
  return true;
}

bool JsonReader::Utf8Sequence() {
  const auto b0 = static_cast<unsigned char>(*p_);
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 == 0xE0) {
    len = 3;
    lo = 0xA0;
  } else if ((b0 >= 0xE1 && b0 <= 0xEC) || b0 == 0xEE || b0 == 0xEF) {
    len = 3;
  } else if (b0 == 0xED) {
    len = 3;
    hi = 0x9F;
  } else if (b0 == 0xF0) {
    len = 4;
    lo = 0x90;
  } else if (b0 >= 0xF1 && b0 <= 0xF3) {
    len = 4;
  } else if (b0 == 0xF4) {
    len = 4;
    hi = 0x8F;
  } else {
    return false;
  }
  if (static_cast<size_t>(end_ - p_) < len) return false;
  const auto b1 = static_cast<unsigned char>(p_[1]);
  if (b1 < lo || b1 > hi) return false;
  for (size_t i = 2; i < len; ++i) {
    const auto b = static_cast<unsigned char>(p_[i]);
    if (b < 0x80 || b > 0xBF) return false;
  }
  p_ += len;
  return true;
}

}  // namespace outboxd
