#include "benchmarks/multidb_report.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "benchmarks/bench_results.h"

namespace outboxd::bench::multidb {
namespace {

// How a row of the table combines the rounds.
enum RowKind {
  kRatio,  // median per setup, and the ratio per-db / one
  kNone,   // median per setup, no ratio
  kSum,    // sum over the rounds (losses, duplicates)
};

struct Row {
  std::string label;
  std::vector<std::string> path;  // into a run's json
  const char* format;             // for one value
  RowKind kind = kRatio;
};

const nlohmann::json* At(const nlohmann::json& j,
                         const std::vector<std::string>& path) {
  const nlohmann::json* p = &j;
  for (const std::string& k : path) {
    if (!p->is_object() || !p->contains(k)) return nullptr;
    p = &(*p)[k];
  }
  return p;
}

double Value(const nlohmann::json& run, const Row& row) {
  const nlohmann::json* v = At(run, row.path);
  return v != nullptr && v->is_number() ? v->get<double>() : 0.0;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

std::string Markdown(const std::string& broker, const nlohmann::json& runs,
                     const std::vector<std::string>& setups, int ndb,
                     int rounds) {
  std::string md = absl::StrCat(
      ndb, " databases on one server, broker: ", broker, "; ", rounds,
      rounds == 1 ? " round" : " rounds, setups alternating",
      rounds == 1 ? "" : ", median of the rounds (losses: sum)", "\n\n");
  const std::vector<Row> rows = {
      {"processes", {"processes"}, "%.0f", kNone},
      {"start: all slots active, s (slots created)",
       {"start", "all_slots_active_s"},
       "%.2f"},
      {"start: warm-up event of every database in the broker, s",
       {"start", "all_warmups_in_broker_s"},
       "%.2f"},
      {"idle: outboxd cores (no events)", {"idle", "cores"}, "%.4f"},
      {"idle: context switches/s", {"idle", "context_switches_per_s"}, "%.0f"},
      {"steady: committed events/s",
       {"steady", "committed_per_s"},
       "%.0f",
       kNone},
      {"steady: events lost", {"read_back", "steady", "lost"}, "%.0f", kSum},
      {"steady: duplicates",
       {"read_back", "steady", "duplicates"},
       "%.0f",
       kSum},
      {"steady: outboxd CPU s", {"steady", "outboxd", "cpu_s"}, "%.2f"},
      {"steady: outboxd CPU s per 1,000 events",
       {"steady", "outboxd", "cpu_s_per_1000_events"},
       "%.3f"},
      {"steady: outboxd cores", {"steady", "outboxd", "cores"}, "%.3f"},
      {"steady: context switches/s",
       {"steady", "outboxd", "context_switches_per_s"},
       "%.0f"},
      {"steady: RSS MB (mean VmRSS)",
       {"steady", "outboxd", "rss_mean_mb"},
       "%.1f"},
      {"steady: peak RSS MB (VmHWM)", {"steady", "outboxd", "hwm_mb"}, "%.1f"},
      {"threads", {"steady", "outboxd", "threads"}, "%.0f"},
      {"librdkafka threads", {"steady", "outboxd", "rdkafka_threads"}, "%.0f"},
      {"PostgreSQL connections of outboxd",
       {"steady", "outboxd", "pg_connections"},
       "%.0f"},
      {"... of which walsenders",
       {"steady", "outboxd", "pg_walsenders"},
       "%.0f"},
      {"steady: PostgreSQL cores", {"steady", "postgres_cores"}, "%.2f"},
      {"backlog: events lost", {"read_back", "backlog", "lost"}, "%.0f", kSum},
      {"backlog: duplicates",
       {"read_back", "backlog", "duplicates"},
       "%.0f",
       kSum},
      {"records with another database's outbox.source",
       {"read_back", "wrong_source"},
       "%.0f",
       kSum},
      {"records the read-back missed (offset gaps)",
       {"read_back", "offset_gaps"},
       "%.0f",
       kSum},
      {"backlog: restart to all slots active, s",
       {"backlog", "all_slots_active_s"},
       "%.2f"},
      {"backlog: restart to all records in the broker, s",
       {"backlog", "drain_s"},
       "%.2f"},
      {"backlog: events/s (restart included)",
       {"backlog", "events_per_s"},
       "%.0f"},
      {"backlog: outboxd CPU s (start included)",
       {"backlog", "outboxd", "cpu_s"},
       "%.2f"},
      {"backlog: outboxd CPU s per 1,000 events",
       {"backlog", "outboxd", "cpu_s_per_1000_events"},
       "%.3f"},
      {"backlog: peak RSS MB (VmHWM)",
       {"backlog", "outboxd", "hwm_mb"},
       "%.1f"},
  };
  // runs per setup, in round order.
  std::map<std::string, std::vector<const nlohmann::json*>> by_setup;
  for (const nlohmann::json& r : runs) {
    by_setup[r["setup"].get<std::string>()].push_back(&r);
  }
  md += "| |";
  std::string sep = "|---|";
  for (const std::string& setup : setups) {
    absl::StrAppend(&md, " ",
                    setup == "one" ? "one outboxd (--databases)"
                                   : absl::StrCat(ndb, " outboxd processes"),
                    " |");
    sep += "---:|";
  }
  const bool ratio = by_setup["one"].size() > 0 &&
                     by_setup["per-db"].size() > 0 && setups.size() == 2;
  if (ratio) {
    md += " processes / one |";
    sep += "---:|";
  }
  md += "\n" + sep + "\n";
  for (const Row& row : rows) {
    absl::StrAppend(&md, "| ", row.label, " |");
    std::map<std::string, double> combined;
    for (const std::string& setup : setups) {
      std::vector<double> values;
      for (const nlohmann::json* r : by_setup[setup]) {
        values.push_back(Value(*r, row));
      }
      double v = 0;
      if (row.kind == kSum) {
        for (double x : values) v += x;
      } else {
        v = Median(values);
      }
      combined[setup] = v;
      absl::StrAppend(&md, " ",
                      values.empty() ? "-" : FormatDouble(row.format, v), " |");
    }
    if (ratio) {
      if (row.kind == kRatio && combined["one"] > 0) {
        absl::StrAppend(
            &md, " ",
            FormatDouble("%.1f x", combined["per-db"] / combined["one"]));
        // The range of the ratios of the rounds that ran both setups.
        std::vector<double> per_round;
        const auto& one = by_setup["one"];
        const auto& per = by_setup["per-db"];
        for (size_t i = 0; i < std::min(one.size(), per.size()); ++i) {
          const double o = Value(*one[i], row);
          if (o > 0) per_round.push_back(Value(*per[i], row) / o);
        }
        if (per_round.size() > 1) {
          std::sort(per_round.begin(), per_round.end());
          absl::StrAppend(&md, " (", FormatDouble("%.1f", per_round.front()),
                          "-", FormatDouble("%.1f", per_round.back()), ")");
        }
        md += " |";
      } else {
        md += " |";
      }
    }
    md += "\n";
  }
  return md;
}

}  // namespace outboxd::bench::multidb
