// Tests for the streaming replication CopyData codec: XLogData and keepalive
// decoding (fields, then each way the bytes can be corrupt) and the standby
// status update encoding (byte-exact).
#include "pg/replication_protocol.h"

#include <string>

#include "absl/status/status.h"
#include "common/byte_reader.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

using ::testing::HasSubstr;

std::string XLogDataBytes(absl::string_view payload) {
  return ByteWriter()
      .U8('w')
      .U64(0x100)
      .U64(0x200)
      .I64(774000000000001)
      .Bytes(payload)
      .Take();
}

std::string KeepaliveBytes(uint8_t reply) {
  return ByteWriter().U8('k').U64(0x16B374D848).I64(-5).U8(reply).Take();
}

void ExpectDataLoss(const absl::StatusOr<ServerCopyMessage>& result,
                    absl::string_view needle) {
  ASSERT_FALSE(result.ok()) << "decoded corrupt bytes; wanted: " << needle;
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss)
      << result.status();
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr(std::string(needle)));
}

TEST(ReplicationProtocolTest, XLogData) {
  std::string bytes = XLogDataBytes("BEGIN-ish payload");
  auto m = DecodeServerCopyMessage(bytes);
  ASSERT_TRUE(m.ok()) << m.status();
  const auto& x = std::get<XLogData>(*m);
  EXPECT_EQ(x.data_start, Lsn(0x100));
  EXPECT_EQ(x.wal_end, Lsn(0x200));
  EXPECT_EQ(x.send_time, 774000000000001);
  EXPECT_EQ(x.data, "BEGIN-ish payload");
  // The payload is a view into the input (documented lifetime).
  EXPECT_EQ(x.data.data(), bytes.data() + XLogData::kHeaderSize);
}

TEST(ReplicationProtocolTest, XLogDataWithEmptyPayload) {
  auto m = DecodeServerCopyMessage(XLogDataBytes(""));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_TRUE(std::get<XLogData>(*m).data.empty());
}

TEST(ReplicationProtocolTest, Keepalive) {
  for (uint8_t reply : {0, 1}) {
    std::string bytes = KeepaliveBytes(reply);
    ASSERT_EQ(bytes.size(), PrimaryKeepalive::kSize);
    auto m = DecodeServerCopyMessage(bytes);
    ASSERT_TRUE(m.ok()) << m.status();
    const auto& k = std::get<PrimaryKeepalive>(*m);
    EXPECT_EQ(k.wal_end, Lsn(0x16B374D848));
    EXPECT_EQ(k.send_time, -5);
    EXPECT_EQ(k.reply_requested, reply == 1);
  }
}

TEST(ReplicationProtocolTest, TruncatedAtEveryOffset) {
  // XLogData's payload is "the rest", so only its header can be cut short.
  std::string xlog = XLogDataBytes("");
  for (size_t len = 0; len < xlog.size(); ++len) {
    ExpectDataLoss(
        DecodeServerCopyMessage(absl::string_view(xlog).substr(0, len)),
        "truncated");
  }
  std::string keepalive = KeepaliveBytes(1);
  for (size_t len = 0; len < keepalive.size(); ++len) {
    ExpectDataLoss(
        DecodeServerCopyMessage(absl::string_view(keepalive).substr(0, len)),
        "truncated");
  }
}

TEST(ReplicationProtocolTest, UnknownKind) {
  // 'r' is what we send, never what we receive.
  for (char kind : {'r', 'x', '\0', 'W', 'K'}) {
    std::string bytes = KeepaliveBytes(0);
    bytes[0] = kind;
    ExpectDataLoss(DecodeServerCopyMessage(bytes),
                   "unknown replication CopyData message kind");
  }
}

TEST(ReplicationProtocolTest, KeepaliveTrailingBytes) {
  ExpectDataLoss(DecodeServerCopyMessage(KeepaliveBytes(0) + "x"), "trailing");
}

TEST(ReplicationProtocolTest, KeepaliveBadReplyRequested) {
  ExpectDataLoss(DecodeServerCopyMessage(KeepaliveBytes(2)),
                 "replyRequested must be 0 or 1, got 0x02");
}

TEST(ReplicationProtocolTest, EncodeStandbyStatusUpdate) {
  StandbyStatusUpdate update;
  update.written = Lsn(0x0102030405060708);
  update.flushed = Lsn(0x1112131415161718);
  update.applied = Lsn(0x2122232425262728);
  update.client_time = 0x3132333435363738;
  update.reply_requested = true;
  std::string bytes = EncodeStandbyStatusUpdate(update);
  ASSERT_EQ(bytes.size(), StandbyStatusUpdate::kSize);
  EXPECT_EQ(bytes, ByteWriter()
                       .U8('r')
                       .U64(0x0102030405060708)
                       .U64(0x1112131415161718)
                       .U64(0x2122232425262728)
                       .I64(0x3132333435363738)
                       .U8(1)
                       .Take());
  // Spot-check the big-endian layout independently of ByteWriter.
  EXPECT_EQ(bytes[0], 'r');
  EXPECT_EQ(bytes[1], '\x01');
  EXPECT_EQ(bytes[8], '\x08');
  EXPECT_EQ(bytes[33], '\x01');

  update.reply_requested = false;
  EXPECT_EQ(EncodeStandbyStatusUpdate(update).back(), '\0');
}

}  // namespace
}  // namespace outboxd
