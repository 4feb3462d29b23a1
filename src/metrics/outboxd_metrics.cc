#include "metrics/outboxd_metrics.h"

#include <algorithm>
#include <iterator>
#include <type_traits>
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

namespace {

// Where a metric's child goes: a field of OutboxdMetrics (one per process)
// or of SourceMetrics (one per source, labelled source="<name>" when the
// source has a name). README "Monitoring" lists them.
using Field =
    std::variant<Counter * OutboxdMetrics::*, Gauge * OutboxdMetrics::*,
                 Histogram * OutboxdMetrics::*,
                 CounterFamily * OutboxdMetrics::*, Counter * SourceMetrics::*,
                 Gauge * SourceMetrics::*, Histogram * SourceMetrics::*,
                 CounterFamily * SourceMetrics::*>;

// `Metric* Owner::*` split into Metric and Owner.
template <typename F>
struct FieldOf;
template <typename M, typename O>
struct FieldOf<M * O::*> {
  using Metric = M;
  using Owner = O;
};

// Every unlabelled metric and labelled counter family, in the order
// /metrics lists them: its field, name, help, and for a labelled counter
// family its one label.
struct MetricSpec {
  Field field;
  const char* name;
  const char* help;
  const char* label = nullptr;
};

const MetricSpec kMetrics[] = {
    {&SourceMetrics::events_published, "outboxd_events_published_total",
     "Events acknowledged by the Kafka broker, by topic", "topic"},
    {&OutboxdMetrics::delivery_errors, "outboxd_delivery_errors_total",
     "Delivery reports with an error (the pipeline stops on them)"},
    {&SourceMetrics::dead_lettered, "outboxd_events_dead_lettered_total",
     "Invalid events produced to the dead-letter topic"},
    {&SourceMetrics::invalid_events, "outboxd_invalid_events_total",
     "Rows or messages that could not become an event"},
    {&SourceMetrics::reserved_headers_dropped,
     "outboxd_reserved_headers_dropped_total",
     "Reserved header names (id, eventType, outbox.*) in a headers column, "
     "dropped from the record"},
    {&SourceMetrics::events_in_flight, "outboxd_events_in_flight",
     "Events handed to the producer and not yet acknowledged"},
    {&SourceMetrics::confirmed_lsn, "outboxd_confirmed_lsn",
     "Flush position last confirmed to PostgreSQL, as a byte position"},
    {&SourceMetrics::server_wal_end, "outboxd_server_wal_end_lsn",
     "Newest WAL position the server reported (XLogData/keepalive walEnd)"},
    {&SourceMetrics::slot_lag_bytes, "outboxd_slot_lag_bytes",
     "Server WAL end minus confirmed position: WAL the slot retains because "
     "of outboxd"},
    {&SourceMetrics::commit_to_ack_seconds, "outboxd_commit_to_ack_seconds",
     "Time from an event's commit in PostgreSQL to its acknowledgement by "
     "Kafka"},
    {&SourceMetrics::reconnects, "outboxd_reconnects_total",
     "Reconnections to PostgreSQL after a lost connection"},
    {&OutboxdMetrics::source_queries, "outboxd_source_queries_total",
     "Queries issued by the polling or notify publisher", "source"},
    {&SourceMetrics::streaming, "outboxd_streaming",
     "1 while the source is streaming (replication started or poller "
     "running), else 0"},
    {&OutboxdMetrics::kafka_brokers_up, "outboxd_kafka_brokers_up",
     "Kafka broker connections in state UP (librdkafka statistics)"},
    {&OutboxdMetrics::kafka_requests, "outboxd_kafka_requests_total",
     "Produce requests sent to the Kafka brokers (librdkafka statistics, "
     "every second)"},
    {&OutboxdMetrics::kafka_records_sent, "outboxd_kafka_records_sent_total",
     "Records sent in produce requests, a retried record again (librdkafka "
     "statistics, every second); per request: divide the rates"},
    {&OutboxdMetrics::cleanup_deleted_rows,
     "outboxd_cleanup_deleted_rows_total",
     "Outbox rows deleted by --cleanup-after"},
    {&OutboxdMetrics::start_time_seconds, "outboxd_start_time_seconds",
     "Start time of the process since the Unix epoch"},
    {&SourceMetrics::slot_lost, "outboxd_slot_lost",
     "1 when the replication slot outboxd streamed from is gone, invalidated "
     "or re-created (events may be missing), until a republish completes"},
    {&SourceMetrics::republished_events, "outboxd_republished_events_total",
     "Outbox rows republished after a lost slot "
     "(--on-slot-loss=republish)"},
    {&SourceMetrics::reconcile_missing,
     "outboxd_reconcile_missing_events_total",
     "Outbox rows the reconciler found never published (older than "
     "--reconcile-margin, committed before the confirmed position), "
     "published late with header outbox.reconciled"},
    {&SourceMetrics::source_failed, "outboxd_source_failed",
     "1 while the source is stopped by a failure of its own and waits to be "
     "retried (several sources: the others go on; one source: outboxd "
     "exits instead)"},
    {&SourceMetrics::slot_failover_ready, "outboxd_slot_failover_ready",
     "1 when the replication slot is a failover slot and the primary's "
     "synchronized_standby_slots names an active physical slot (a promoted "
     "standby would have it; PostgreSQL 17+), else 0"},
    {&SourceMetrics::publication_missing_tables,
     "outboxd_publication_missing_tables",
     "Outbox tables (--table) whose inserts the publication does not carry "
     "now (ALTER PUBLICATION ... DROP TABLE): their events are not streamed; "
     "0 when it carries every one"},
};

// The labelled gauges, all per source, listed after kMetrics.
struct GaugeSpec {
  const char* name;
  const char* help;
};
enum LabelledGauge {
  kStageLsnGauge,
  kStageLagGauge,
  kRetainedGauge,
  kWalStatusGauge,
  kStalledGauge,
};
const GaugeSpec kLabelledGauges[] = {
    {"outboxd_stage_lsn",
     "Newest position that reached the stage, as a byte position (CDC "
     "only): wal = server walEnd, received/produced/acknowledged = commit "
     "LSN of the newest event, confirmed = position confirmed to the slot"},
    {"outboxd_stage_lag_seconds",
     "Now minus the commit time of the newest event that reached the "
     "stage; 0 when the stage holds every event received"},
    {"outboxd_slot_retained_wal_bytes",
     "WAL the replication slot retains: pg_current_wal_lsn() minus its "
     "restart_lsn (pg_replication_slots, read every "
     "--slot-metrics-interval)"},
    {"outboxd_slot_wal_status",
     "1 for the replication slot's current wal_status "
     "(pg_replication_slots), 0 for the others"},
    {"outboxd_stalled",
     "1 while events are pending and nothing was acknowledged for "
     "--stall-timeout, by reason"},
};

prometheus::Family<Gauge>& AddGauge(Registry& r, LabelledGauge g) {
  return r.AddGauge(kLabelledGauges[g].name, kLabelledGauges[g].help);
}

// The buckets of outboxd_commit_to_ack_seconds.
const Histogram::BucketBoundaries kLatencyBuckets = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5,   1,      2.5,   5,    10,    30,   60};

// Declares every family on `r`, kMetrics' then the labelled gauges' (a
// name declared again is the same family), and sets the kMetrics fields of
// `owner` to new children labelled `labels`; `families` keeps the labelled
// counter families made.
template <typename Owner>
void AddChildren(Registry& r, Owner& owner, const prometheus::Labels& labels,
                 std::vector<std::unique_ptr<CounterFamily>>& families) {
  for (const MetricSpec& m : kMetrics) {
    std::visit(
        [&](auto field) {
          using Metric = typename FieldOf<decltype(field)>::Metric;
          constexpr bool kMine =
              std::is_same_v<typename FieldOf<decltype(field)>::Owner, Owner>;
          if constexpr (std::is_same_v<Metric, Gauge>) {
            auto& family = r.AddGauge(m.name, m.help);
            if constexpr (kMine) owner.*field = &family.Add(labels);
          } else if constexpr (std::is_same_v<Metric, Histogram>) {
            auto& family = r.AddHistogram(m.name, m.help);
            if constexpr (kMine) {
              owner.*field = &family.Add(labels, kLatencyBuckets);
            }
          } else {
            auto& family = r.AddCounter(m.name, m.help);
            if constexpr (kMine && std::is_same_v<Metric, Counter>) {
              owner.*field = &family.Add(labels);
            } else if constexpr (kMine) {
              families.push_back(std::make_unique<CounterFamily>(
                  family, std::vector<std::string>{m.label}, labels));
              owner.*field = families.back().get();
            }
          }
        },
        m.field);
  }
  for (int g = 0; g < static_cast<int>(std::size(kLabelledGauges)); ++g) {
    AddGauge(r, static_cast<LabelledGauge>(g));
  }
}

}  // namespace

SourceMetrics::SourceMetrics(Registry& r, std::string name)
    : name_(std::move(name)) {
  prometheus::Labels own;
  if (!name_.empty()) own["source"] = name_;
  AddChildren(r, *this, own, families_);
  auto with = [&own](prometheus::Labels labels) {
    labels.insert(own.begin(), own.end());
    return labels;
  };
  stage_lsn_family_ = &AddGauge(r, kStageLsnGauge);
  auto& lag = AddGauge(r, kStageLagGauge);
  for (int i = 0; i < kStageCount; ++i) {
    stage_lsn[i] = &stage_lsn_family_->Add(with({{"stage", kStageNames[i]}}));
    stage_lag_seconds[i] = i == static_cast<int>(Stage::kWal)
                               ? &unexposed_wal_lag_
                               : &lag.Add(with({{"stage", kStageNames[i]}}));
  }
  slot_retained_wal_bytes = &AddGauge(r, kRetainedGauge).Add(own);
  auto& wal_status = AddGauge(r, kWalStatusGauge);
  for (int i = 0; i < kWalStatusCount; ++i) {
    slot_wal_status[i] =
        &wal_status.Add(with({{"status", kWalStatusNames[i]}}));
  }
  auto& stalled_family = AddGauge(r, kStalledGauge);
  for (int i = 0; i < kStallReasonCount; ++i) {
    stalled[i] = &stalled_family.Add(with({{"reason", kStallReasonNames[i]}}));
  }
}

SourceMetrics::~SourceMetrics() = default;

void SourceMetrics::DropStageLsn() {
  for (int i = 0; i < kStageCount; ++i) {
    if (stage_lsn[i] == &unexposed_lsn_[i]) continue;
    stage_lsn_family_->Remove(stage_lsn[i]);
    stage_lsn[i] = &unexposed_lsn_[i];
  }
}

std::string SourceMetrics::StalledReason() const {
  for (int i = 0; i < kStallReasonCount; ++i) {
    if (stalled[i]->Value() > 0) {
      return absl::StrCat("stalled (", kStallReasonNames[i],
                          "): events pending and nothing acknowledged for "
                          "--stall-timeout");
    }
  }
  return "";
}

OutboxdMetrics::OutboxdMetrics()
    : OutboxdMetrics(nullptr, std::make_unique<Registry>()) {}

OutboxdMetrics::OutboxdMetrics(Registry* r) : OutboxdMetrics(r, nullptr) {}

OutboxdMetrics::OutboxdMetrics(Registry* r, std::unique_ptr<Registry> own)
    : own_registry_(std::move(own)),
      registry(r != nullptr ? r : own_registry_.get()) {
  // Every family, in /metrics' order; the per-process children.
  AddChildren(*registry, *this, {}, families_);
  start_time_seconds->Set(absl::ToUnixMillis(absl::Now()) / 1000.0);
}

OutboxdMetrics::~OutboxdMetrics() = default;

SourceMetrics& OutboxdMetrics::ForSource(const std::string& name) {
  absl::MutexLock lock(&sources_mu_);
  for (const std::unique_ptr<SourceMetrics>& s : sources_) {
    if (s->name() == name) return *s;
  }
  sources_.push_back(
      std::unique_ptr<SourceMetrics>(new SourceMetrics(*registry, name)));
  return *sources_.back();
}

std::string OutboxdMetrics::NotReadyReason() const {
  absl::MutexLock lock(&sources_mu_);
  const bool named = !sources_.empty() && !sources_.front()->name().empty();
  bool any_streaming = false;
  for (const std::unique_ptr<SourceMetrics>& s : sources_) {
    if (s->streaming->Value() > 0) any_streaming = true;
  }
  if (!any_streaming) {
    return named ? "not streaming from any source"
                 : "not streaming from the source";
  }
  if (kafka_brokers_up->Value() <= 0) return "no Kafka broker connection up";
  // A source that does not stream (a standby, or reconnecting) does not
  // hold up the others; a stalled or failed one does: its events wait.
  for (const std::unique_ptr<SourceMetrics>& s : sources_) {
    const std::string who =
        s->name().empty() ? "" : absl::StrCat("source ", s->name(), " ");
    if (s->source_failed->Value() > 0) {
      return absl::StrCat(who,
                          "failed (its log says why) and waits to be retried");
    }
    if (std::string why = s->StalledReason(); !why.empty()) {
      return absl::StrCat(who, why);
    }
  }
  return "";
}

}  // namespace outboxd::metrics
