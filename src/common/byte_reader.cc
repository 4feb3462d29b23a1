#include "common/byte_reader.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace outboxd {
namespace {

template <typename T>
T LoadBigEndian(const char* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) {
    v = (v << 8) | static_cast<uint8_t>(p[i]);
  }
  return static_cast<T>(v);
}

template <typename T>
void StoreBigEndian(std::string& out, T value) {
  uint64_t v = static_cast<uint64_t>(value);
  for (size_t i = sizeof(T); i-- > 0;) {
    out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
}

}  // namespace

absl::Status ByteReader::Truncated(absl::string_view what,
                                   size_t wanted) const {
  return absl::DataLossError(
      absl::StrCat("truncated message: ", what, " needs ", wanted,
                   " bytes at offset ", pos_, ", ", remaining(), " left"));
}

#define OUTBOXD_READ_FIXED_(T)                                    \
  if (remaining() < sizeof(T)) return Truncated(what, sizeof(T)); \
  T v = LoadBigEndian<T>(bytes_.data() + pos_);                   \
  pos_ += sizeof(T);                                              \
  return v

absl::StatusOr<uint8_t> ByteReader::ReadU8(absl::string_view what) {
  OUTBOXD_READ_FIXED_(uint8_t);
}
absl::StatusOr<int16_t> ByteReader::ReadI16(absl::string_view what) {
  OUTBOXD_READ_FIXED_(int16_t);
}
absl::StatusOr<int32_t> ByteReader::ReadI32(absl::string_view what) {
  OUTBOXD_READ_FIXED_(int32_t);
}
absl::StatusOr<uint32_t> ByteReader::ReadU32(absl::string_view what) {
  OUTBOXD_READ_FIXED_(uint32_t);
}
absl::StatusOr<int64_t> ByteReader::ReadI64(absl::string_view what) {
  OUTBOXD_READ_FIXED_(int64_t);
}
absl::StatusOr<uint64_t> ByteReader::ReadU64(absl::string_view what) {
  OUTBOXD_READ_FIXED_(uint64_t);
}
#undef OUTBOXD_READ_FIXED_

absl::StatusOr<absl::string_view> ByteReader::ReadBytes(
    size_t n, absl::string_view what) {
  if (remaining() < n) return Truncated(what, n);
  absl::string_view v = bytes_.substr(pos_, n);
  pos_ += n;
  return v;
}

absl::StatusOr<absl::string_view> ByteReader::ReadCString(
    absl::string_view what) {
  const void* nul = std::memchr(bytes_.data() + pos_, '\0', remaining());
  if (nul == nullptr) {
    return absl::DataLossError(absl::StrCat("truncated message: ", what,
                                            " has no NUL terminator at offset ",
                                            pos_));
  }
  size_t len = static_cast<const char*>(nul) - (bytes_.data() + pos_);
  absl::string_view v = bytes_.substr(pos_, len);
  pos_ += len + 1;
  return v;
}

absl::string_view ByteReader::ReadRest() {
  absl::string_view v = bytes_.substr(pos_);
  pos_ = bytes_.size();
  return v;
}

absl::Status ByteReader::ExpectEnd(absl::string_view what) const {
  if (AtEnd()) return absl::OkStatus();
  return absl::DataLossError(absl::StrCat(
      what, ": ", remaining(), " unexpected trailing bytes at offset ", pos_));
}

ByteWriter& ByteWriter::U8(uint8_t v) {
  StoreBigEndian(out_, v);
  return *this;
}
ByteWriter& ByteWriter::I16(int16_t v) {
  StoreBigEndian(out_, v);
  return *this;
}
ByteWriter& ByteWriter::I32(int32_t v) {
  StoreBigEndian(out_, v);
  return *this;
}
ByteWriter& ByteWriter::U32(uint32_t v) {
  StoreBigEndian(out_, v);
  return *this;
}
ByteWriter& ByteWriter::I64(int64_t v) {
  StoreBigEndian(out_, v);
  return *this;
}
ByteWriter& ByteWriter::U64(uint64_t v) {
  StoreBigEndian(out_, v);
  return *this;
}
ByteWriter& ByteWriter::Bytes(absl::string_view v) {
  out_.append(v.data(), v.size());
  return *this;
}
ByteWriter& ByteWriter::CString(absl::string_view v) {
  out_.append(v.data(), v.size());
  out_.push_back('\0');
  return *this;
}

}  // namespace outboxd
