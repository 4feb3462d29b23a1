#include "benchmarks/live_publisher.h"

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"

namespace outboxd::bench {
namespace {

// The median, min and max of `v` (all -1 when empty).
nlohmann::json Spread(std::vector<double> v) {
  if (v.empty()) return {{"median", -1.0}, {"min", -1.0}, {"max", -1.0}};
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  const double median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return {{"median", median}, {"min", v.front()}, {"max", v.back()}};
}

// "median (min-max)", or the one figure of a single run.
std::string SpreadText(const nlohmann::json& s, int decimals) {
  const double median = s["median"].get<double>();
  if (median < 0) return "-";
  const double lo = s["min"].get<double>(), hi = s["max"].get<double>();
  if (lo == hi) return absl::StrFormat("%.*f", decimals, median);
  return absl::StrFormat("%.*f (%.*f-%.*f)", decimals, median, decimals, lo,
                         decimals, hi);
}

using Figures = std::map<std::string, std::vector<double>>;

// rate -> setting -> figure -> the runs' values.
std::map<std::string, std::map<std::string, Figures>> Collect(
    const nlohmann::json& runs, const nlohmann::json& latency) {
  std::map<std::string, std::map<std::string, Figures>> by;
  for (const nlohmann::json& r : runs) {
    if (!r["all_arrived"].get<bool>()) continue;
    Figures& f = by[r["target_rate"]][r["variant"]];
    const nlohmann::json& p = r["path"];
    f["publisher"].push_back(r["outboxd"]["cpu_us_per_event"]);
    f["walsender"].push_back(p["walsender_cpu_us_per_event"]);
    f["broker"].push_back(p["broker_cpu_us_per_event"]);
    f["whole_path"].push_back(p["whole_path_cpu_us_per_event"]);
    f["published_per_s"].push_back(r["published_per_s"]);
    f["peak_rss_mb"].push_back(r["outboxd"]["peak_rss_mb"]);
    const double req = p["requests_per_event"].get<double>();
    if (req >= 0) f["requests_per_event"].push_back(req);
  }
  for (const nlohmann::json& l : latency) {
    Figures& f = by[l["target_rate"]][l["variant"]];
    f["p50_ms"].push_back(l["latency_ms"]["p50"]);
    f["p99_ms"].push_back(l["latency_ms"]["p99"]);
    const double pressure = l.value("cpu_pressure_some", -1.0);
    if (pressure >= 0) f["cpu_pressure_pct"].push_back(100 * pressure);
  }
  return by;
}

}  // namespace

Variant DebeziumVariant(const vs_debezium::RigOptions& rig) {
  Variant v;
  v.name = kDebeziumVariant;
  v.debezium = rig;
  return v;
}

absl::Status PrepareDebezium(BenchEnv& env) {
  auto n = env.pg().Query(
      "postgres", absl::StrCat("SELECT count(*) FROM pg_publication WHERE "
                               "pubname = '",
                               vs_debezium::kDebeziumPublication, "'"));
  if (!n.ok()) return n.status();
  if (*n != "0") return absl::OkStatus();
  return env.pg().Exec(
      "postgres",
      absl::StrCat("CREATE PUBLICATION ", vs_debezium::kDebeziumPublication,
                   " FOR TABLE public.outbox"));
}

absl::StatusOr<std::unique_ptr<testing::ChildProcess>> StartLivePublisher(
    BenchEnv& env, const Variant& v,
    const std::vector<std::string>& outboxd_args, const std::string& slot,
    const std::string& topic, const std::string& log_name) {
  if (!v.debezium) return env.StartOutboxd(outboxd_args, log_name);
  absl::Status s = PrepareDebezium(env);
  if (!s.ok()) return s;
  auto kind = vs_debezium::ParsePublisher("debezium");
  if (!kind.ok()) return kind.status();
  kind->route_topic = topic;
  return vs_debezium::StartPublisher(env, *v.debezium, *kind, slot, log_name,
                                     nullptr);
}

absl::Status WaitLiveStreaming(BenchEnv& env, const Variant& v,
                               const std::string& slot,
                               testing::ChildProcess& child,
                               const std::string& log_name) {
  if (!v.debezium) return env.WaitSlotActive(slot, absl::Seconds(60));
  return vs_debezium::WaitStreaming(
      env, slot, child, absl::StrCat(env.work_dir(), "/", log_name, ".log"));
}

absl::StatusOr<int> StopLivePublisher(BenchEnv& env, const Variant& v,
                                      testing::ChildProcess& child) {
  if (!v.debezium) return env.StopOutboxd(child);
  absl::Status s = vs_debezium::StopPublisher(child);
  if (!s.ok()) return s;
  return 0;
}

nlohmann::json VsDebeziumSummary(const nlohmann::json& runs,
                                 const nlohmann::json& latency) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [rate, settings] : Collect(runs, latency)) {
    nlohmann::json row = {{"target_rate", rate},
                          {"settings", nlohmann::json::object()}};
    for (const auto& [name, figures] : settings) {
      nlohmann::json s = {{"runs", figures.count("whole_path")
                                       ? figures.at("whole_path").size()
                                       : 0}};
      for (const auto& [figure, values] : figures) s[figure] = Spread(values);
      row["settings"][name] = s;
    }
    auto dbz = settings.find(kDebeziumVariant);
    for (const auto& [name, figures] : settings) {
      if (name == kDebeziumVariant || dbz == settings.end()) continue;
      nlohmann::json ratio;
      for (const char* figure : {"publisher", "broker", "whole_path"}) {
        const double mine = row["settings"][name][figure]["median"];
        const nlohmann::json& theirs = row["settings"][kDebeziumVariant];
        const double d = theirs.contains(figure)
                             ? theirs[figure]["median"].get<double>()
                             : -1.0;
        ratio[figure] = d > 0 && mine >= 0 ? mine / d : -1.0;
      }
      row["settings"][name]["vs_debezium"] = ratio;
    }
    out.push_back(row);
  }
  return out;
}

std::string VsDebeziumMarkdown(const nlohmann::json& summary) {
  std::string md =
      "\nSide by side, per event (median of the CPU runs, range in "
      "brackets; latency, and the share of time some task waited for a CPU, "
      "from the latency runs)\n\n| target/s | publisher | "
      "runs | publisher CPU µs | walsender µs | broker µs | whole path µs | "
      "whole path vs Debezium | produce requests/event | peak RSS MB | "
      "p50 ms | p99 ms | CPU pressure % |\n|---:|---|---:|---:|---:|---:|---:"
      "|---:|---:|---:|---:|---:|---:|\n";
  for (const nlohmann::json& row : summary) {
    for (const auto& [name, s] : row["settings"].items()) {
      const nlohmann::json none = {{"median", -1.0}};
      auto fig = [&](const char* k, int d) {
        return SpreadText(s.contains(k) ? s[k] : none, d);
      };
      const double ratio = s.contains("vs_debezium")
                               ? s["vs_debezium"]["whole_path"].get<double>()
                               : -1.0;
      absl::StrAppend(
          &md,
          absl::StrFormat(
              "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s "
              "| %s |\n",
              row["target_rate"].get<std::string>(), name, s["runs"].get<int>(),
              fig("publisher", 1), fig("walsender", 1), fig("broker", 1),
              fig("whole_path", 1),
              ratio > 0 ? absl::StrFormat("**%.2fx**", ratio) : "-",
              fig("requests_per_event", 3), fig("peak_rss_mb", 0),
              fig("p50_ms", 1), fig("p99_ms", 1), fig("cpu_pressure_pct", 0)));
    }
  }
  return md;
}

}  // namespace outboxd::bench
