// Micro-benchmark of the pgoutput decoder on what outboxd mostly sees:
// Insert messages of an outbox row (uuid id, aggregatetype, aggregateid,
// type, ~200-byte jsonb payload, null headers). Reports messages/s
// (items_per_second) and bytes/s. Measures only; asserts nothing.
//
//   decoder_bench --benchmark_filter=Insert
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "benchmark/benchmark.h"
#include "common/byte_reader.h"
#include "pg/pgoutput.h"
#include "pg/replication_protocol.h"

namespace outboxd::pgoutput {
namespace {

// Distinct messages cycled through, so that the branch predictor and caches
// see varying lengths as they would on a real stream.
constexpr int kDistinctMessages = 1024;

std::string Uuid(int i) {
  return absl::StrFormat("%08x-4e2b-4c1d-9a7f-%012x", 0x3f1c0000 + i,
                         0xb10c00000000ULL + i * 7919);
}

std::string Payload(int i) {
  // ~200 bytes of jsonb as PostgreSQL prints it.
  return absl::StrCat(
      R"({"items": [{"qty": )", i % 9 + 1, R"(, "sku": "SKU-)", 100000 + i,
      R"(", "price": 1999}], "total": 1999, "currency": "EUR", )",
      R"("customer": {"id": )", 4200 + i, R"(, "email": "customer)", i,
      R"(@example.com"}, "created": "2024-07-11T10:15:30.123456+00:00"})");
}

std::string OutboxInsert(int i) {
  std::string id = Uuid(i);
  std::string aggregate_id = absl::StrCat("order-", 1000000 + i);
  std::string payload = Payload(i);
  ByteWriter w;
  w.U8('I').U32(16385).U8('N').I16(6);
  w.U8('t').I32(static_cast<int32_t>(id.size())).Bytes(id);
  w.U8('t').I32(5).Bytes("order");
  w.U8('t').I32(static_cast<int32_t>(aggregate_id.size())).Bytes(aggregate_id);
  w.U8('t').I32(12).Bytes("OrderCreated");
  w.U8('t').I32(static_cast<int32_t>(payload.size())).Bytes(payload);
  w.U8('n');
  return w.Take();
}

std::vector<std::string> OutboxInserts() {
  std::vector<std::string> messages;
  messages.reserve(kDistinctMessages);
  for (int i = 0; i < kDistinctMessages; ++i) {
    messages.push_back(OutboxInsert(i));
  }
  return messages;
}

int64_t TotalSize(const std::vector<std::string>& messages) {
  int64_t total = 0;
  for (const auto& m : messages) total += static_cast<int64_t>(m.size());
  return total;
}

// Ends the benchmark with `status`'s message when it is an error.
bool Failed(benchmark::State& state, const absl::Status& status) {
  if (status.ok()) return false;
  state.SkipWithError(std::string(status.message()).c_str());
  return true;
}

// One `decode(message)` per iteration, cycling through `messages`; items
// processed = iterations, bytes = the sizes of the messages decoded. Stops
// when `decode` returns false.
template <typename DecodeFn>
void DecodeEach(benchmark::State& state,
                const std::vector<std::string>& messages, DecodeFn decode) {
  size_t i = 0;
  int64_t bytes = 0;
  for (auto _ : state) {
    const std::string& m = messages[i];
    if (!decode(m)) break;
    bytes += static_cast<int64_t>(m.size());
    if (++i == messages.size()) i = 0;
  }
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(bytes);
}

// pgoutput::Decode alone, one Insert per iteration.
void BM_DecodeOutboxInsert(benchmark::State& state) {
  const std::vector<std::string> messages = OutboxInserts();
  DecodeEach(state, messages, [&state](const std::string& m) {
    auto decoded = Decode(m);
    if (Failed(state, decoded.status())) return false;
    benchmark::DoNotOptimize(decoded);
    return true;
  });
  state.counters["avg_msg_bytes"] =
      static_cast<double>(TotalSize(messages)) / messages.size();
}
BENCHMARK(BM_DecodeOutboxInsert);

// The stream's path per row: CopyData 'w' header, then the pgoutput Insert.
void BM_DecodeXLogDataOutboxInsert(benchmark::State& state) {
  std::vector<std::string> messages;
  for (const std::string& insert : OutboxInserts()) {
    messages.push_back(ByteWriter()
                           .U8('w')
                           .U64(0x16B374D848)
                           .U64(0x16B374D900)
                           .I64(774000000000000)
                           .Bytes(insert)
                           .Take());
  }
  DecodeEach(state, messages, [&state](const std::string& m) {
    auto copy = DecodeServerCopyMessage(m);
    if (Failed(state, copy.status())) return false;
    auto decoded = Decode(std::get<XLogData>(*copy).data);
    if (Failed(state, decoded.status())) return false;
    benchmark::DoNotOptimize(decoded);
    return true;
  });
}
BENCHMARK(BM_DecodeXLogDataOutboxInsert);

// Begin + Commit framing, decoded once per transaction.
void BM_DecodeBeginCommit(benchmark::State& state) {
  const std::string begin = ByteWriter()
                                .U8('B')
                                .U64(0x16B374D848)
                                .I64(774000000000000)
                                .U32(742)
                                .Take();
  const std::string commit = ByteWriter()
                                 .U8('C')
                                 .U8(0)
                                 .U64(0x16B374D848)
                                 .U64(0x16B374D900)
                                 .I64(774000000000000)
                                 .Take();
  for (auto _ : state) {
    auto b = Decode(begin);
    auto c = Decode(commit);
    benchmark::DoNotOptimize(b);
    benchmark::DoNotOptimize(c);
  }
  state.SetItemsProcessed(state.iterations() * 2);
  state.SetBytesProcessed(state.iterations() *
                          static_cast<int64_t>(begin.size() + commit.size()));
}
BENCHMARK(BM_DecodeBeginCommit);

}  // namespace
}  // namespace outboxd::pgoutput

BENCHMARK_MAIN();
