#include "consumer/dead_letter_sink.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"

namespace outboxd {

KafkaRecord DeadLetterRecord(const InboxRecord& r,
                             const DeadLetterOptions& options,
                             const std::string& error, int attempts) {
  KafkaRecord k;
  k.topic = options.topic;
  if (r.key.has_value()) k.key = *r.key;
  if (r.value.has_value()) k.value = absl::string_view(*r.value);
  k.timestamp_ms = r.timestamp_ms;
  k.headers = r.headers;
  k.headers.emplace_back("inbox.error", error);
  k.headers.emplace_back("inbox.attempts", absl::StrCat(attempts));
  k.headers.emplace_back("inbox.topic", r.topic);
  k.headers.emplace_back("inbox.partition", absl::StrCat(r.partition));
  k.headers.emplace_back("inbox.offset", absl::StrCat(r.offset));
  k.headers.emplace_back("inbox.group", options.group_id);
  return k;
}

std::vector<std::pair<std::string, std::string>> DeadLetterProducerProperties(
    const std::vector<std::pair<std::string, std::string>>&
        consumer_properties) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& kv : consumer_properties) {
    if (absl::StartsWith(kv.first, "bootstrap") ||
        absl::StartsWith(kv.first, "security") ||
        absl::StartsWith(kv.first, "sasl") ||
        absl::StartsWith(kv.first, "ssl")) {
      out.push_back(kv);
    }
  }
  out.emplace_back("client.id", "outbox-inbox-dlq");
  return out;
}

DeadLetterSink::DeadLetterSink(DeadLetterOptions options, SinkFactory factory)
    : options_(std::move(options)), factory_(std::move(factory)) {}

absl::Status DeadLetterSink::Send(const InboxRecord& record,
                                  const std::string& error, int attempts) {
  if (producer_ == nullptr) {
    ProducerOptions po;
    po.brokers = options_.brokers;
    po.properties = DeadLetterProducerProperties(options_.kafka_properties);
    DeliveryCallback on_delivery = [this](uint64_t, absl::Status s) {
      delivered_ = true;
      delivery_ = std::move(s);
    };
    if (factory_) {
      ASSIGN_OR_RETURN(producer_, factory_(po, std::move(on_delivery)));
    } else {
      ASSIGN_OR_RETURN(producer_,
                       KafkaProducer::Create(po, std::move(on_delivery)));
    }
  }
  KafkaRecord k = DeadLetterRecord(record, options_, error, attempts);
  delivered_ = false;
  absl::Time deadline = absl::Now() + options_.timeout;
  absl::Status s;
  while (absl::IsResourceExhausted(s = producer_->Produce(k, 0)) &&
         absl::Now() < deadline) {
    producer_->Poll(absl::Milliseconds(50));
  }
  RETURN_IF_ERROR(s);
  while (!delivered_ && absl::Now() < deadline) {
    producer_->Poll(absl::Milliseconds(50));
  }
  if (!delivered_) {
    return absl::UnavailableError(
        absl::StrCat("dead-lettering to ", options_.topic, " timed out"));
  }
  return delivery_;
}

}  // namespace outboxd
