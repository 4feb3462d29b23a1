// Metrics registry: counters, gauges and histograms with labels, and their
// Prometheus text exposition (format 0.0.4).
//
// Threading: every method is thread-safe. Updates of a child (Counter,
// Gauge, Histogram) are lock-free atomics except Histogram::Observe (one
// short mutex); creating a labelled child and Exposition() take the family's
// mutex. Children live as long as the Registry: keep the references that
// Labels() returns instead of looking them up on a hot path.
#ifndef OUTBOXD_METRICS_REGISTRY_H_
#define OUTBOXD_METRICS_REGISTRY_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace outboxd::metrics {

// Monotonic; only grows.
class Counter {
 public:
  void Increment(double by = 1) {
    if (by > 0) value_.fetch_add(by, std::memory_order_relaxed);
  }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void Set(double v) { value_.store(v, std::memory_order_relaxed); }
  void Add(double by) { value_.fetch_add(by, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Cumulative buckets as Prometheus expects them; `bounds` are the upper
// bounds (le), strictly increasing, +Inf implied.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double v);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // one per bound, then +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Collect() const;

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // per bucket, +Inf last
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
};

// Exponential bucket bounds: start, start*factor, ... (count bounds).
std::vector<double> ExponentialBuckets(double start, double factor, int count);

enum class MetricType { kCounter, kGauge, kHistogram };

// One metric name with its label names; children by label values.
template <typename T>
class Family {
 public:
  Family(std::vector<std::string> label_names,
         std::function<std::unique_ptr<T>()> make)
      : label_names_(std::move(label_names)), make_(std::move(make)) {}

  // The child for these label values (one per label name), created on first
  // use. Extra or missing values are a programming error: they are padded or
  // cut to the label names.
  T& Labels(std::vector<std::string> values) {
    values.resize(label_names_.size());
    absl::MutexLock lock(&mu_);
    auto& child = children_[values];
    if (child == nullptr) child = make_();
    return *child;
  }
  // The child of a family without labels.
  T& Get() { return Labels({}); }

  const std::vector<std::string>& label_names() const { return label_names_; }

  // Calls `f(label_values, child)` for each child in label order.
  template <typename F>
  void ForEach(F f) const {
    absl::MutexLock lock(&mu_);
    for (const auto& [values, child] : children_) f(values, *child);
  }

 private:
  const std::vector<std::string> label_names_;
  const std::function<std::unique_ptr<T>()> make_;
  mutable absl::Mutex mu_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_
      ABSL_GUARDED_BY(mu_);
};

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registration happens at startup, before exposition; names must be
  // unique and valid Prometheus metric names (checked: a bad name aborts).
  Family<Counter>& AddCounter(std::string name, std::string help,
                              std::vector<std::string> label_names = {});
  Family<Gauge>& AddGauge(std::string name, std::string help,
                          std::vector<std::string> label_names = {});
  Family<Histogram>& AddHistogram(std::string name, std::string help,
                                  std::vector<double> bounds,
                                  std::vector<std::string> label_names = {});

  // The Prometheus text exposition of every metric, in registration order.
  std::string Exposition() const;

 private:
  struct Entry {
    std::string name;
    std::string help;
    MetricType type;
    std::unique_ptr<Family<Counter>> counters;
    std::unique_ptr<Family<Gauge>> gauges;
    std::unique_ptr<Family<Histogram>> histograms;
  };
  Entry& Add(std::string name, std::string help, MetricType type,
             const std::vector<std::string>& label_names);

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Entry>> entries_ ABSL_GUARDED_BY(mu_);
};

// Text exposition helpers, exposed for tests.
std::string EscapeLabelValue(absl::string_view value);  // \\ \" \n
std::string EscapeHelp(absl::string_view help);         // \\ \n
std::string FormatValue(double v);  // integers without exponent, +Inf, NaN
bool IsValidMetricName(absl::string_view name);
bool IsValidLabelName(absl::string_view name);

}  // namespace outboxd::metrics

#endif  // OUTBOXD_METRICS_REGISTRY_H_
