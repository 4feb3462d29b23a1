#include "metrics/outboxd_metrics.h"

#include <algorithm>
#include <utility>
#include <variant>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "prometheus/text_serializer.h"

namespace outboxd::metrics {

void Registry::Declare(const std::string& name, const std::string& help,
                       prometheus::MetricType type) {
  absl::MutexLock lock(&mu_);
  for (const prometheus::MetricFamily& head : heads_) {
    if (head.name == name) return;
  }
  heads_.push_back({name, help, type, {}});
}

prometheus::Family<Counter>& Registry::AddCounter(const std::string& name,
                                                  const std::string& help) {
  auto& family =
      prometheus::BuildCounter().Name(name).Help(help).Register(*this);
  Declare(name, help, prometheus::MetricType::Counter);
  return family;
}

prometheus::Family<Gauge>& Registry::AddGauge(const std::string& name,
                                              const std::string& help) {
  auto& family = prometheus::BuildGauge().Name(name).Help(help).Register(*this);
  Declare(name, help, prometheus::MetricType::Gauge);
  return family;
}

prometheus::Family<Histogram>& Registry::AddHistogram(const std::string& name,
                                                      const std::string& help) {
  auto& family =
      prometheus::BuildHistogram().Name(name).Help(help).Register(*this);
  Declare(name, help, prometheus::MetricType::Histogram);
  return family;
}

std::vector<prometheus::MetricFamily> Registry::Collect() const {
  std::vector<prometheus::MetricFamily> collected =
      prometheus::Registry::Collect();
  absl::flat_hash_map<std::string, prometheus::MetricFamily*> by_name;
  for (prometheus::MetricFamily& f : collected) {
    std::sort(
        f.metric.begin(), f.metric.end(),
        [](const prometheus::ClientMetric& a,
           const prometheus::ClientMetric& b) { return a.label < b.label; });
    by_name[f.name] = &f;
  }
  std::vector<prometheus::MetricFamily> out;
  out.reserve(collected.size());
  absl::MutexLock lock(&mu_);
  for (const prometheus::MetricFamily& head : heads_) {
    auto it = by_name.find(head.name);
    if (it == by_name.end()) {
      out.push_back(head);  // no child yet: HELP and TYPE only
    } else {
      out.push_back(std::move(*it->second));
      by_name.erase(it);
    }
  }
  // Families registered on the base class directly, after ours.
  for (prometheus::MetricFamily& f : collected) {
    if (by_name.contains(f.name)) out.push_back(std::move(f));
  }
  return out;
}

std::string Registry::Exposition() const {
  return prometheus::TextSerializer().Serialize(Collect());
}

CounterFamily::CounterFamily(prometheus::Family<Counter>& family,
                             std::vector<std::string> label_names,
                             prometheus::Labels constant_labels)
    : family_(family),
      label_names_(std::move(label_names)),
      constant_labels_(std::move(constant_labels)) {}

Counter& CounterFamily::Labels(const std::vector<std::string>& values) {
  std::vector<absl::string_view> padded(label_names_.size());
  for (size_t i = 0; i < padded.size() && i < values.size(); ++i) {
    padded[i] = values[i];
  }
  return With(absl::StrJoin(padded, absl::string_view("\0", 1)));
}

Counter& CounterFamily::With(absl::string_view key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = children_.find(key);
  if (it != children_.end()) return *it->second;
  prometheus::Labels labels = constant_labels_;
  size_t start = 0;
  for (size_t i = 0; i < label_names_.size(); ++i) {
    size_t end = i + 1 < label_names_.size() ? key.find('\0', start)
                                             : absl::string_view::npos;
    if (end == absl::string_view::npos) end = key.size();
    labels[label_names_[i]] = std::string(key.substr(start, end - start));
    start = std::min(end + 1, key.size());
  }
  Counter& child = family_.Add(labels);
  children_.emplace(key, &child);
  return child;
}

OutboxdMetrics::OutboxdMetrics()
    : OutboxdMetrics(nullptr, std::make_unique<Registry>(), Sources::kOne) {}

OutboxdMetrics::OutboxdMetrics(Registry* r, Sources sources)
    : OutboxdMetrics(
          r,
          sources == Sources::kSeveral ? std::make_unique<Registry>() : nullptr,
          sources) {}

OutboxdMetrics::~OutboxdMetrics() = default;

namespace {

using CounterField = Counter* OutboxdMetrics::*;
using GaugeField = Gauge* OutboxdMetrics::*;
using HistogramField = Histogram* OutboxdMetrics::*;
using FamilyField = CounterFamily* OutboxdMetrics::*;

// Whether a metric is one per process or one per source (labelled
// source="<name>" with several sources). README "Monitoring" lists them.
enum class Scope { kSource, kProcess };

// Every metric, in the order /metrics lists them: where its field is, name,
// help, for a labelled counter family its one label, and its scope.
struct MetricSpec {
  std::variant<CounterField, GaugeField, HistogramField, FamilyField> field;
  const char* name;
  const char* help;
  const char* label = nullptr;
  Scope scope = Scope::kSource;
};

const MetricSpec kMetrics[] = {
    {&OutboxdMetrics::events_published, "outboxd_events_published_total",
     "Events acknowledged by the Kafka broker, by topic", "topic"},
    {&OutboxdMetrics::delivery_errors, "outboxd_delivery_errors_total",
     "Delivery reports with an error (the pipeline stops on them)", nullptr,
     Scope::kProcess},
    {&OutboxdMetrics::dead_lettered, "outboxd_events_dead_lettered_total",
     "Invalid events produced to the dead-letter topic"},
    {&OutboxdMetrics::invalid_events, "outboxd_invalid_events_total",
     "Rows or messages that could not become an event"},
    {&OutboxdMetrics::reserved_headers_dropped,
     "outboxd_reserved_headers_dropped_total",
     "Reserved header names (id, eventType, outbox.*) in a headers column, "
     "dropped from the record"},
    {&OutboxdMetrics::events_in_flight, "outboxd_events_in_flight",
     "Events handed to the producer and not yet acknowledged"},
    {&OutboxdMetrics::confirmed_lsn, "outboxd_confirmed_lsn",
     "Flush position last confirmed to PostgreSQL, as a byte position"},
    {&OutboxdMetrics::server_wal_end, "outboxd_server_wal_end_lsn",
     "Newest WAL position the server reported (XLogData/keepalive walEnd)"},
    {&OutboxdMetrics::slot_lag_bytes, "outboxd_slot_lag_bytes",
     "Server WAL end minus confirmed position: WAL the slot retains because "
     "of outboxd"},
    {&OutboxdMetrics::commit_to_ack_seconds, "outboxd_commit_to_ack_seconds",
     "Time from an event's commit in PostgreSQL to its acknowledgement by "
     "Kafka"},
    {&OutboxdMetrics::reconnects, "outboxd_reconnects_total",
     "Reconnections to PostgreSQL after a lost connection"},
    {&OutboxdMetrics::source_queries, "outboxd_source_queries_total",
     "Queries issued by the polling or notify publisher", "source",
     Scope::kProcess},
    {&OutboxdMetrics::streaming, "outboxd_streaming",
     "1 while the source is streaming (replication started or poller "
     "running), else 0"},
    {&OutboxdMetrics::kafka_brokers_up, "outboxd_kafka_brokers_up",
     "Kafka broker connections in state UP (librdkafka statistics)", nullptr,
     Scope::kProcess},
    {&OutboxdMetrics::cleanup_deleted_rows,
     "outboxd_cleanup_deleted_rows_total",
     "Outbox rows deleted by --cleanup-after", nullptr, Scope::kProcess},
    {&OutboxdMetrics::start_time_seconds, "outboxd_start_time_seconds",
     "Start time of the process since the Unix epoch", nullptr,
     Scope::kProcess},
    {&OutboxdMetrics::slot_lost, "outboxd_slot_lost",
     "1 when the replication slot outboxd streamed from is gone, invalidated "
     "or re-created (events may be missing), until a republish completes"},
    {&OutboxdMetrics::republished_events, "outboxd_republished_events_total",
     "Outbox rows republished after a lost slot "
     "(--on-slot-loss=republish)"},
    {&OutboxdMetrics::source_failed, "outboxd_source_failed",
     "1 while the source is stopped by a failure of its own and waits to be "
     "retried (several sources: the others go on; one source: outboxd "
     "exits instead)"},
};

// The buckets of outboxd_commit_to_ack_seconds.
const Histogram::BucketBoundaries kLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5,   1,      2.5,   5,    10,    30,   60};

}  // namespace

OutboxdMetrics::OutboxdMetrics(Registry* r, std::unique_ptr<Registry> own,
                               Sources sources)
    : own_registry_(std::move(own)),
      registry(r != nullptr ? r : own_registry_.get()),
      sources_(sources) {
  // With several sources the process's per-source fields point at a
  // private registry (own_registry_): its families on `registry` have
  // labelled children only, those of the views.
  Build(
      sources == Sources::kSeveral && r != nullptr ? *own_registry_ : *registry,
      nullptr);
  start_time_seconds->Set(absl::ToUnixMillis(absl::Now()) / 1000.0);
}

OutboxdMetrics::OutboxdMetrics(OutboxdMetrics& process, std::string source)
    : registry(process.registry),
      source_(std::move(source)),
      sources_(Sources::kSeveral) {
  Build(*registry, &process);
}

OutboxdMetrics& OutboxdMetrics::ForSource(const std::string& name) {
  if (sources_ == Sources::kOne) return *this;
  absl::MutexLock lock(&views_mu_);
  for (const std::unique_ptr<OutboxdMetrics>& v : views_) {
    if (v->source_ == name) return *v;
  }
  views_.push_back(
      std::unique_ptr<OutboxdMetrics>(new OutboxdMetrics(*this, name)));
  return *views_.back();
}

void OutboxdMetrics::Build(Registry& per_source, OutboxdMetrics* process) {
  Registry& reg = *registry;
  // The labels of a per-source child, and where it lives.
  prometheus::Labels own;
  if (!source_.empty()) own["source"] = source_;
  auto with = [&own](prometheus::Labels labels) {
    labels.insert(own.begin(), own.end());
    return labels;
  };
  const prometheus::Labels none;
  // The family where the children of `m` go, declared on the served
  // registry first (so /metrics lists every family in kMetrics' order,
  // children or not). `add` is &Registry::AddCounter, AddGauge, ...
  auto home = [&](const MetricSpec& m, auto add) -> auto& {
    auto& served = (reg.*add)(m.name, m.help);
    if (m.scope == Scope::kProcess) return served;
    return (per_source.*add)(m.name, m.help);
  };
  for (const MetricSpec& m : kMetrics) {
    // A view shares the process's per-process children.
    const bool shared = m.scope == Scope::kProcess && process != nullptr;
    const prometheus::Labels& labels = m.scope == Scope::kSource ? own : none;
    if (const auto* f = std::get_if<CounterField>(&m.field)) {
      this->*(*f) =
          shared ? process->*(*f) : &home(m, &Registry::AddCounter).Add(labels);
    } else if (const auto* g = std::get_if<GaugeField>(&m.field)) {
      this->*(*g) =
          shared ? process->*(*g) : &home(m, &Registry::AddGauge).Add(labels);
    } else if (const auto* h = std::get_if<HistogramField>(&m.field)) {
      this->*(*h) =
          shared
              ? process->*(*h)
              : &home(m, &Registry::AddHistogram).Add(labels, kLatencyBuckets);
    } else {
      const FamilyField f = std::get<FamilyField>(m.field);
      if (shared) {
        this->*f = process->*f;
        continue;
      }
      families_.push_back(std::make_unique<CounterFamily>(
          home(m, &Registry::AddCounter), std::vector<std::string>{m.label},
          labels));
      this->*f = families_.back().get();
    }
  }
  // The labelled gauges, all per source.
  const char* const kStageLsnHelp =
      "Newest position that reached the stage, as a byte position (CDC "
      "only): wal = server walEnd, received/produced/acknowledged = commit "
      "LSN of the newest event, confirmed = position confirmed to the slot";
  const char* const kStageLagHelp =
      "Now minus the commit time of the newest event that reached the "
      "stage; 0 when the stage holds every event received";
  const char* const kRetainedHelp =
      "WAL the replication slot retains: pg_current_wal_lsn() minus its "
      "restart_lsn (pg_replication_slots, read every "
      "--slot-metrics-interval)";
  const char* const kWalStatusHelp =
      "1 for the replication slot's current wal_status "
      "(pg_replication_slots), 0 for the others";
  const char* const kStalledHelp =
      "1 while events are pending and nothing was acknowledged for "
      "--stall-timeout, by reason";
  // Declares on the served registry, returns the family children go to.
  auto gauges = [&](const char* name,
                    const char* help) -> prometheus::Family<Gauge>& {
    reg.AddGauge(name, help);
    return per_source.AddGauge(name, help);
  };
  stage_lsn_family_ = &gauges("outboxd_stage_lsn", kStageLsnHelp);
  auto& lag = gauges("outboxd_stage_lag_seconds", kStageLagHelp);
  for (int i = 0; i < kStageCount; ++i) {
    stage_lsn[i] = &stage_lsn_family_->Add(with({{"stage", kStageNames[i]}}));
    stage_lag_seconds[i] = i == static_cast<int>(Stage::kWal)
                               ? &unexposed_wal_lag_
                               : &lag.Add(with({{"stage", kStageNames[i]}}));
  }
  slot_retained_wal_bytes =
      &gauges("outboxd_slot_retained_wal_bytes", kRetainedHelp).Add(own);
  auto& wal_status = gauges("outboxd_slot_wal_status", kWalStatusHelp);
  for (int i = 0; i < kWalStatusCount; ++i) {
    slot_wal_status[i] =
        &wal_status.Add(with({{"status", kWalStatusNames[i]}}));
  }
  auto& stalled_family = gauges("outboxd_stalled", kStalledHelp);
  for (int i = 0; i < kStallReasonCount; ++i) {
    stalled[i] = &stalled_family.Add(with({{"reason", kStallReasonNames[i]}}));
  }
}

void OutboxdMetrics::DropStageLsn() {
  for (int i = 0; i < kStageCount; ++i) {
    if (stage_lsn[i] == &unexposed_lsn_[i]) continue;
    stage_lsn_family_->Remove(stage_lsn[i]);
    stage_lsn[i] = &unexposed_lsn_[i];
  }
}

std::string OutboxdMetrics::StalledReason() const {
  for (int i = 0; i < kStallReasonCount; ++i) {
    if (stalled[i]->Value() > 0) {
      return absl::StrCat("stalled (", kStallReasonNames[i],
                          "): events pending and nothing acknowledged for "
                          "--stall-timeout");
    }
  }
  return "";
}

std::string OutboxdMetrics::NotReadyReason() const {
  if (sources_ == Sources::kOne || !source_.empty()) {
    if (streaming->Value() <= 0) return "not streaming from the source";
    if (kafka_brokers_up->Value() <= 0) {
      return "no Kafka broker connection up";
    }
    return StalledReason();
  }
  absl::MutexLock lock(&views_mu_);
  bool any_streaming = false;
  for (const std::unique_ptr<OutboxdMetrics>& v : views_) {
    if (v->streaming->Value() > 0) any_streaming = true;
  }
  if (!any_streaming) return "not streaming from any source";
  if (kafka_brokers_up->Value() <= 0) return "no Kafka broker connection up";
  // A source that does not stream (a standby, or reconnecting) does not
  // hold up the others; a stalled or failed one does: its events wait.
  for (const std::unique_ptr<OutboxdMetrics>& v : views_) {
    if (v->source_failed->Value() > 0) {
      return absl::StrCat("source ", v->source_,
                          " failed (its log says why) and waits to be retried");
    }
    if (std::string why = v->StalledReason(); !why.empty()) {
      return absl::StrCat("source ", v->source_, " ", why);
    }
  }
  return "";
}

}  // namespace outboxd::metrics
