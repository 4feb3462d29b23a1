// ByteReader / ByteWriter: strict big-endian (network order) access to a
// message buffer, as PostgreSQL's pqformat.c does it.
//
// ByteReader does not own its buffer: the bytes must remain live while the
// reader, and every string_view it returned, is in use. Every read is
// bounds-checked in every build; running off the end is a kDataLoss status
// naming what was being read, never a crash. Not thread-safe.
#ifndef OUTBOXD_COMMON_BYTE_READER_H_
#define OUTBOXD_COMMON_BYTE_READER_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace outboxd {

class ByteReader {
 public:
  explicit ByteReader(absl::string_view bytes) : bytes_(bytes) {}

  absl::StatusOr<uint8_t> ReadU8(absl::string_view what);
  absl::StatusOr<int16_t> ReadI16(absl::string_view what);
  absl::StatusOr<int32_t> ReadI32(absl::string_view what);
  absl::StatusOr<uint32_t> ReadU32(absl::string_view what);
  absl::StatusOr<int64_t> ReadI64(absl::string_view what);
  absl::StatusOr<uint64_t> ReadU64(absl::string_view what);
  // Exactly `n` bytes; the view points into the reader's buffer.
  absl::StatusOr<absl::string_view> ReadBytes(size_t n, absl::string_view what);
  // A NUL-terminated string; the view excludes the terminator.
  absl::StatusOr<absl::string_view> ReadCString(absl::string_view what);
  // Everything not read yet.
  absl::string_view ReadRest();

  size_t remaining() const { return bytes_.size() - pos_; }
  size_t position() const { return pos_; }
  bool AtEnd() const { return pos_ == bytes_.size(); }
  // kDataLoss when bytes are left over: trailing garbage is corruption.
  absl::Status ExpectEnd(absl::string_view what) const;

 private:
  absl::Status Truncated(absl::string_view what, size_t wanted) const;

  absl::string_view bytes_;
  size_t pos_ = 0;
};

// Appends big-endian values to a string; for the messages outboxd sends
// (standby status updates) and for test fixtures.
class ByteWriter {
 public:
  ByteWriter& U8(uint8_t v);
  ByteWriter& I16(int16_t v);
  ByteWriter& I32(int32_t v);
  ByteWriter& U32(uint32_t v);
  ByteWriter& I64(int64_t v);
  ByteWriter& U64(uint64_t v);
  ByteWriter& Bytes(absl::string_view v);
  // Appends `v` and a NUL terminator.
  ByteWriter& CString(absl::string_view v);

  const std::string& data() const { return out_; }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

}  // namespace outboxd

#endif  // OUTBOXD_COMMON_BYTE_READER_H_
