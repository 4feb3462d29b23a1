#include "kafka/producer_stats.h"

#include <cstdint>
#include <optional>

#include "nlohmann/json.hpp"

namespace outboxd {
namespace {

int64_t IntField(const nlohmann::json& object, const char* name) {
  auto it = object.find(name);
  if (it == object.end() || !it->is_number_integer()) return 0;
  return it->get<int64_t>();
}

}  // namespace

std::optional<ProducerStats> ParseProducerStats(absl::string_view json) {
  auto doc = nlohmann::json::parse(json.begin(), json.end(), nullptr,
                                   /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return std::nullopt;
  auto brokers = doc.find("brokers");
  if (brokers == doc.end() || !brokers->is_object()) return std::nullopt;
  ProducerStats stats;
  for (const auto& broker : *brokers) {
    if (!broker.is_object()) continue;
    if (broker.value("state", "") == "UP") ++stats.brokers_up;
    auto req = broker.find("req");
    if (req != broker.end() && req->is_object()) {
      stats.produce_requests += IntField(*req, "Produce");
    }
  }
  stats.records_sent = IntField(doc, "txmsgs");
  return stats;
}

int64_t ProducerCounters::Step(int64_t total, int64_t* last) {
  int64_t increment = total > *last ? total - *last : 0;
  *last = total;
  return increment;
}

ProducerCounters::Increment ProducerCounters::Advance(
    const ProducerStats& stats) {
  Increment increment;
  increment.produce_requests = Step(stats.produce_requests, &last_requests_);
  increment.records_sent = Step(stats.records_sent, &last_records_);
  return increment;
}

}  // namespace outboxd
