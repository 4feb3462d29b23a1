#include "benchmarks/vs_debezium_report.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "benchmarks/bench_results.h"

namespace outboxd::bench::vs_debezium {

namespace {

// The backlog runs against pg_recvlogical, with the broker's CPU and the
// produce requests (when measured: --broker_pid, outboxd's /metrics).
std::string BrokerTable(const nlohmann::json& runs) {
  double recv = 0;
  bool broker = false;
  for (const auto& r : runs) {
    if (r["run"] == "pg_recvlogical" && r.contains("events_per_s"))
      recv = r["events_per_s"].get<double>();
    broker |= r.contains("broker_cpu_s");
  }
  if (!broker) return "";
  std::string md =
      "| run | events/s | / pg_recvlogical | CPU s | broker CPU s | broker "
      "µs/event | produce requests | records/request |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : runs) {
    if (r["run"] == "pg_recvlogical") continue;
    auto f = [&](const char* key, const char* fmt) -> std::string {
      if (!r.contains(key) || r[key].is_null()) return "-";
      return FormatDouble(fmt, r[key].get<double>());
    };
    const double rate = r.value("events_per_s", 0.0);
    absl::StrAppend(&md, "| ", r["run"].get<std::string>(), " | ",
                    f("events_per_s", "%.0f"), " | ",
                    recv > 0 ? absl::StrFormat("%.2fx", rate / recv) : "-",
                    " | ", f("cpu_s", "%.1f"), " | ", f("broker_cpu_s", "%.1f"),
                    " | ", f("broker_cpu_us_per_event", "%.1f"), " | ",
                    f("produce_requests", "%.0f"), " | ",
                    f("records_per_request", "%.0f"), " |\n");
  }
  return md + "\n";
}

}  // namespace

std::string Markdown(const nlohmann::json& doc) {
  std::string md;
  if (doc.contains("equality")) {
    const nlohmann::json& e = doc["equality"];
    const nlohmann::json& s = e["summary"];
    absl::StrAppend(
        &md, "### Equality (", s["rows"].get<int64_t>(),
        " rows through both)\n\n",
        "Debezium records: ", s["debezium_records"].get<int64_t>(),
        ", outboxd records: ", s["outboxd_records"].get<int64_t>(),
        ", matched by `id`: ", s["matched_by_id"].get<int64_t>(),
        ". Compared: topic (outboxd's `outboxd.` prefix removed), key, value, "
        "`id` header, partition, and the order of ids within each key. "
        "Differences: **",
        e["difference_count"].get<int64_t>(), "**",
        e["equal"].get<bool>() ? " (equal)" : "", ".\n\n");
    if (!e["differences"].empty()) {
      md += "| difference | count | examples |\n|---|---:|---|\n";
      for (const auto& [kind, d] : e["differences"].items()) {
        std::vector<std::string> ex;
        for (const auto& x : d["examples"]) {
          ex.push_back(absl::StrReplaceAll(x.get<std::string>(),
                                           {{"|", "\\|"}, {"\n", " "}}));
        }
        absl::StrAppend(&md, "| ", kind, " | ", d["count"].get<int64_t>(),
                        " | `", absl::StrJoin(ex, "`, `"), "` |\n");
      }
      md += "\n";
    }
    absl::StrAppend(&md, "Not compared (informational): timestamps differ on ",
                    s["timestamp_differs"].get<int64_t>(),
                    " records (outboxd: the commit time; Debezium minus "
                    "outboxd, ms: ",
                    s["timestamp_debezium_minus_outboxd_ms"].dump(),
                    "); header names (records carrying each): Debezium ",
                    s["header_names_debezium"].dump(), "; outboxd ",
                    s["header_names_outboxd"].dump(), ".\n\n");
  }
  if (doc.contains("throughput")) {
    const nlohmann::json& t = doc["throughput"];
    const nlohmann::json& b = t["backlog"];
    double outboxd_rate = 0, outboxd_cpu = 0, outboxd_rss = 0;
    for (const auto& r : t["runs"]) {
      if (r["run"] == "outboxd" && r.contains("events_per_s")) {
        outboxd_rate = r["events_per_s"].get<double>();
        outboxd_cpu = r["cpu_s"].get<double>();
        outboxd_rss = r["peak_rss_mb"].get<double>();
      }
    }
    absl::StrAppend(
        &md, "### Throughput (backlog of ", b["rows"].get<int64_t>(),
        " rows, 100 per transaction, ~",
        b["payload_bytes_avg"].get<std::string>(),
        "-byte jsonb payloads, 1,000 keys; one run after the other)\n\n",
        "| run | events/s (start to last record) | outboxd / this | first "
        "record after s | events/s after first record | CPU s | outboxd / "
        "this | peak RSS MB | outboxd / this | PostgreSQL CPU s | slot "
        "confirmed s after last record | load before / after |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (const auto& r : t["runs"]) {
      auto f = [&](const char* key, const char* fmt) -> std::string {
        if (!r.contains(key) || r[key].is_null()) return "-";
        return FormatDouble(fmt, r[key].get<double>());
      };
      auto ratio = [&](double mine, const char* key) -> std::string {
        if (!r.contains(key) || r[key].is_null() || r[key].get<double>() == 0)
          return "-";
        return absl::StrFormat("%.2fx", mine / r[key].get<double>());
      };
      std::string confirmed = f("slot_confirmed_after_last_record_s", "%.2f");
      if (r.contains("slot_settled_lsn")) {
        confirmed = absl::StrCat(
            "not within ", FormatDouble("%.0f", r["slot_wait_s"].get<double>()),
            " s: stopped ",
            r["slot_settled_bytes_before_last_commit"].get<std::string>(),
            " bytes short, ",
            FormatDouble("%.1f",
                         r["slot_settled_after_last_record_s"].get<double>()),
            " s after the last record");
      }
      std::string rate = f("events_per_s", "%.0f");
      if (r.contains("error")) rate = r["error"].get<std::string>();
      absl::StrAppend(
          &md, "| ", r["run"].get<std::string>(), " | ", rate, " | ",
          ratio(outboxd_rate, "events_per_s"), " | ",
          f("first_record_after_s", "%.1f"), " | ",
          f("events_per_s_after_first_record", "%.0f"), " | ",
          f("cpu_s", "%.1f"), " | ",
          r["run"] == "pg_recvlogical"
              ? "-"
              : absl::StrFormat("%.2fx",
                                outboxd_cpu > 0 && r.contains("cpu_s")
                                    ? outboxd_cpu / r["cpu_s"].get<double>()
                                    : 0),
          " | ", f("peak_rss_mb", "%.0f"), " | ",
          r["run"] == "pg_recvlogical"
              ? "-"
              : absl::StrFormat(
                    "%.2fx", r.contains("peak_rss_mb")
                                 ? outboxd_rss / r["peak_rss_mb"].get<double>()
                                 : 0),
          " | ", f("postgres_cpu_s", "%.1f"), " | ", confirmed, " | ",
          r["load_before"].get<std::string>(), " / ",
          r.value("load_after", std::string("-")), " |\n");
    }
    md +=
        "\n(\"outboxd / this\": outboxd's events/s divided by the run's, and "
        "for CPU and RSS outboxd's value divided by the run's: below 1 means "
        "outboxd used less.)\n\n";
    md += BrokerTable(t["runs"]);
  }
  if (doc.contains("latency")) {
    md +=
        "### Latency (commit to consumer, one event per transaction, same "
        "consumer)\n\n"
        "| publisher | offered/s | committed/s | p50 ms | p90 ms | p99 ms | "
        "max ms | p50, p99: outboxd / this | publisher CPU s | kept up | "
        "load before / after |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|\n";
    std::map<int, nlohmann::json> outboxd_at;
    for (const auto& r : doc["latency"]) {
      if (r["publisher"] == "outboxd") {
        outboxd_at[r["offered_rate"].get<int>()] = r["latency_ms"];
      }
    }
    for (const auto& r : doc["latency"]) {
      const auto& l = r["latency_ms"];
      std::string ratio = "-";
      auto o = outboxd_at.find(r["offered_rate"].get<int>());
      if (o != outboxd_at.end() && l["p50"].get<double>() > 0 &&
          l["p99"].get<double>() > 0) {
        ratio = absl::StrFormat(
            "%.3f, %.3f",
            o->second["p50"].get<double>() / l["p50"].get<double>(),
            o->second["p99"].get<double>() / l["p99"].get<double>());
      }
      std::string kept = r["kept_up"].get<bool>() ? "yes" : "**no**";
      if (!r["kept_up"].get<bool>() && r["publisher_kept_up"].get<bool>()) {
        kept = "publisher yes; generator short of the rate";
      }
      absl::StrAppend(
          &md, "| ", r["publisher"].get<std::string>(), " | ",
          r["offered_rate"].get<int>(), " | ",
          absl::StrFormat("%.0f", r["committed_per_s"].get<double>()), " | ",
          FormatMs(l["p50"]), " | ", FormatMs(l["p90"]), " | ",
          FormatMs(l["p99"]), " | ", FormatMs(l["max"]), " | ", ratio, " | ",
          absl::StrFormat("%.2f", r["cpu_s"].get<double>()), " | ", kept, " | ",
          r["load_before"].get<std::string>(), " / ",
          r["load_after"].get<std::string>(), " |\n");
    }
    for (const auto& r :
         doc.value("latency_skipped", nlohmann::json::array())) {
      absl::StrAppend(&md, "| ", r["publisher"].get<std::string>(), " | ",
                      r["offered_rate"].get<int>(),
                      " | - | - | - | - | - | - | - | not run: fell behind "
                      "at a lower rate | |\n");
    }
    md += "\n";
  }
  return md;
}

absl::Status WriteCdf(const std::string& out,
                      const std::vector<LatencyRun>& runs) {
  std::vector<CdfLine> lines;
  for (const LatencyRun& r : runs) {
    lines.push_back({r.summary["publisher"].get<std::string>(),
                     r.summary["offered_rate"].get<int>(), r.cdf});
  }
  return WriteCdfPlot(out,
                      {"vs-debezium", "vs_debezium_bench",
                       "outboxd vs Debezium: commit-to-consumer latency CDF "
                       "(real Kafka)",
                       0.5},
                      lines);
}

}  // namespace outboxd::bench::vs_debezium
