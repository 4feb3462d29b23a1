#include "metrics/registry.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace outboxd::metrics {
namespace {

bool IsNameStart(char c, bool colon_ok) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         (colon_ok && c == ':');
}
bool IsNameChar(char c, bool colon_ok) {
  return IsNameStart(c, colon_ok) || (c >= '0' && c <= '9');
}

// `name{a="x",b="y"` without the closing brace, or `name` when there are no
// labels and no extra label; `extra` is an already formatted label (le="..").
std::string Series(absl::string_view name,
                   const std::vector<std::string>& label_names,
                   const std::vector<std::string>& values,
                   absl::string_view extra = "") {
  std::string out(name);
  if (label_names.empty() && extra.empty()) return out;
  out += '{';
  for (size_t i = 0; i < label_names.size(); ++i) {
    if (i > 0) out += ',';
    absl::StrAppend(&out, label_names[i], "=\"", EscapeLabelValue(values[i]),
                    "\"");
  }
  if (!extra.empty()) {
    if (!label_names.empty()) out += ',';
    absl::StrAppend(&out, extra);
  }
  out += '}';
  return out;
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double v) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) -
             bounds_.begin();  // first bound >= v: le is inclusive
  absl::MutexLock lock(&mu_);
  ++counts_[i];
  sum_ += v;
}

Histogram::Snapshot Histogram::Collect() const {
  Snapshot s;
  s.bounds = bounds_;
  absl::MutexLock lock(&mu_);
  uint64_t running = 0;
  for (uint64_t c : counts_) {
    running += c;
    s.cumulative.push_back(running);
  }
  s.count = running;
  s.sum = sum_;
  return s;
}

std::vector<double> ExponentialBuckets(double start, double factor,
                                       int count) {
  std::vector<double> b;
  double v = start;
  for (int i = 0; i < count; ++i, v *= factor) b.push_back(v);
  return b;
}

std::string EscapeLabelValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string EscapeHelp(absl::string_view help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return absl::StrFormat("%.0f", v);
  }
  // The shortest text that reads back as the same double (0.005, not
  // 0.0050000000000000001).
  for (int precision = 1; precision < 17; ++precision) {
    std::string text = absl::StrFormat("%.*g", precision, v);
    if (std::strtod(text.c_str(), nullptr) == v) return text;
  }
  return absl::StrFormat("%.17g", v);
}

bool IsValidMetricName(absl::string_view name) {
  if (name.empty() || !IsNameStart(name[0], true)) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return IsNameChar(c, true); });
}

bool IsValidLabelName(absl::string_view name) {
  if (name.empty() || !IsNameStart(name[0], false)) return false;
  if (name.size() >= 2 && name[0] == '_' && name[1] == '_') return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return IsNameChar(c, false); });
}

Registry::Entry& Registry::Add(std::string name, std::string help,
                               MetricType type,
                               const std::vector<std::string>& label_names) {
  bool ok = IsValidMetricName(name);
  for (const auto& l : label_names) ok = ok && IsValidLabelName(l) && l != "le";
  absl::MutexLock lock(&mu_);
  for (const auto& e : entries_) ok = ok && e->name != name;
  if (!ok) {
    std::fprintf(stderr, "metrics: bad or duplicate metric %s\n", name.c_str());
    std::abort();  // a programming error, found by any test
  }
  auto entry = std::make_unique<Entry>();
  entry->name = std::move(name);
  entry->help = std::move(help);
  entry->type = type;
  entries_.push_back(std::move(entry));
  return *entries_.back();
}

Family<Counter>& Registry::AddCounter(std::string name, std::string help,
                                      std::vector<std::string> label_names) {
  Entry& e = Add(std::move(name), std::move(help), MetricType::kCounter,
                 label_names);
  e.counters = std::make_unique<Family<Counter>>(
      std::move(label_names), [] { return std::make_unique<Counter>(); });
  return *e.counters;
}

Family<Gauge>& Registry::AddGauge(std::string name, std::string help,
                                  std::vector<std::string> label_names) {
  Entry& e =
      Add(std::move(name), std::move(help), MetricType::kGauge, label_names);
  e.gauges = std::make_unique<Family<Gauge>>(
      std::move(label_names), [] { return std::make_unique<Gauge>(); });
  return *e.gauges;
}

Family<Histogram>& Registry::AddHistogram(
    std::string name, std::string help, std::vector<double> bounds,
    std::vector<std::string> label_names) {
  std::sort(bounds.begin(), bounds.end());
  bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
  Entry& e = Add(std::move(name), std::move(help), MetricType::kHistogram,
                 label_names);
  e.histograms = std::make_unique<Family<Histogram>>(
      std::move(label_names),
      [bounds] { return std::make_unique<Histogram>(bounds); });
  return *e.histograms;
}

std::string Registry::Exposition() const {
  std::string out;
  absl::MutexLock lock(&mu_);
  for (const auto& e : entries_) {
    const char* type = e->type == MetricType::kCounter ? "counter"
                       : e->type == MetricType::kGauge ? "gauge"
                                                       : "histogram";
    absl::StrAppend(&out, "# HELP ", e->name, " ", EscapeHelp(e->help), "\n",
                    "# TYPE ", e->name, " ", type, "\n");
    switch (e->type) {
      case MetricType::kCounter:
        e->counters->ForEach([&](const auto& values, const Counter& c) {
          absl::StrAppend(&out,
                          Series(e->name, e->counters->label_names(), values),
                          " ", FormatValue(c.Value()), "\n");
        });
        break;
      case MetricType::kGauge:
        e->gauges->ForEach([&](const auto& values, const Gauge& g) {
          absl::StrAppend(&out,
                          Series(e->name, e->gauges->label_names(), values),
                          " ", FormatValue(g.Value()), "\n");
        });
        break;
      case MetricType::kHistogram:
        e->histograms->ForEach([&](const auto& values, const Histogram& h) {
          const auto& names = e->histograms->label_names();
          Histogram::Snapshot s = h.Collect();
          std::string bucket = absl::StrCat(e->name, "_bucket");
          for (size_t i = 0; i <= s.bounds.size(); ++i) {
            std::string le =
                i < s.bounds.size() ? FormatValue(s.bounds[i]) : "+Inf";
            absl::StrAppend(
                &out,
                Series(bucket, names, values, absl::StrCat("le=\"", le, "\"")),
                " ", s.cumulative[i], "\n");
          }
          absl::StrAppend(&out,
                          Series(absl::StrCat(e->name, "_sum"), names, values),
                          " ", FormatValue(s.sum), "\n",
                          Series(absl::StrCat(e->name, "_count"), names,
                                 values),
                          " ", s.count, "\n");
        });
        break;
    }
  }
  return out;
}

}  // namespace outboxd::metrics
