// libFuzzer target for the bytes outboxd takes from the network: the
// walsender's CopyData messages and the pgoutput messages inside XLogData.
// Any input must yield either a value or a kDataLoss status: never a crash,
// an out-of-bounds read (ASan), undefined behaviour (UBSan) or another code.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "pg/pgoutput.h"
#include "pg/replication_protocol.h"

namespace {

// Touches every view of a decoded message so that ASan checks they lie in
// the input.
size_t Touch(absl::string_view v) {
  size_t sum = 0;
  for (char c : v) sum += static_cast<unsigned char>(c);
  return sum;
}

size_t TouchMessage(const outboxd::pgoutput::PgOutputMessage& message) {
  using namespace outboxd::pgoutput;
  auto touch_tuple = [](const TupleData& t) {
    size_t sum = 0;
    for (const TupleValue& v : t.values) sum += Touch(v.data);
    return sum;
  };
  if (const auto* i = std::get_if<Insert>(&message)) {
    return touch_tuple(i->new_tuple);
  }
  if (const auto* u = std::get_if<Update>(&message)) {
    return touch_tuple(u->new_tuple) +
           (u->old_tuple ? touch_tuple(*u->old_tuple) : 0);
  }
  if (const auto* d = std::get_if<Delete>(&message)) {
    return touch_tuple(d->old_tuple);
  }
  if (const auto* m = std::get_if<Message>(&message)) {
    return Touch(m->prefix) + Touch(m->content);
  }
  return 0;
}

void CheckOnlyDataLoss(const absl::Status& status) {
  if (!status.ok() && status.code() != absl::StatusCode::kDataLoss) abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  volatile size_t sink = 0;

  // The same bytes as a bare pgoutput message...
  auto message = outboxd::pgoutput::Decode(bytes);
  CheckOnlyDataLoss(message.status());
  if (message.ok()) sink = sink + TouchMessage(*message);

  // ...and as a CopyData message, decoding an XLogData payload like the
  // stream does.
  auto copy = outboxd::DecodeServerCopyMessage(bytes);
  CheckOnlyDataLoss(copy.status());
  if (copy.ok()) {
    if (const auto* x = std::get_if<outboxd::XLogData>(&*copy)) {
      auto inner = outboxd::pgoutput::Decode(x->data);
      CheckOnlyDataLoss(inner.status());
      if (inner.ok()) sink = sink + TouchMessage(*inner);
    }
  }
  return 0;
}
