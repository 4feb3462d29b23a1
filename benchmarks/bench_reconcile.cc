#include "benchmarks/bench_reconcile.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "benchmarks/bench_proc.h"

namespace outboxd::bench {
namespace {

constexpr absl::Duration kDefaultInterval = absl::Seconds(30);
constexpr absl::Duration kDefaultMargin = absl::Minutes(1);

// The groups of the reconciler's statements (pipeline/reconciler.cc), by
// pg_stat_statements' normalized text.
constexpr char kStatementsSql[] = R"sql(
SELECT coalesce(json_object_agg(g, json_build_object(
         'calls', calls, 'rows', rows, 'exec_ms', ms)), '{}')::text
FROM (SELECT CASE
        WHEN query LIKE '%.xmin) > age(%' THEN 'window'
        WHEN query LIKE '%= ANY($3::text[])%' THEN 'missing_rows'
        WHEN query LIKE 'SELECT (extract(epoch FROM clock_timestamp())%'
          THEN 'clock'
        WHEN query LIKE '%xmin_horizon::text::numeric < $2::numeric%'
          THEN 'state'
        WHEN query LIKE 'SELECT attname::text, atttypid::int%' THEN 'table'
        ELSE 'other' END AS g,
      sum(calls) AS calls, sum(rows) AS rows, sum(total_exec_time) AS ms
      FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
      WHERE r.rolname = '%ROLE%' GROUP BY 1) t
)sql";

double Num(const nlohmann::json& j, const char* group, const char* key) {
  if (!j.contains(group) || !j[group].contains(key)) return 0;
  return j[group][key].get<double>();
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The median of `get` over the runs of `setting`.
template <typename Get>
double MedianOf(const nlohmann::json& runs, const std::string& setting,
                Get get) {
  std::vector<double> v;
  for (const nlohmann::json& r : runs) {
    if (r["reconcile"]["setting"] == setting) v.push_back(get(r));
  }
  return Median(v);
}

double Pct(double part, double whole) {
  return whole > 0 ? 100.0 * part / whole : 0.0;
}

}  // namespace

absl::StatusOr<std::vector<ReconcileSetting>> ParseReconcileSettings(
    const std::vector<std::string>& names) {
  std::vector<ReconcileSetting> out;
  for (const std::string& name : names) {
    ReconcileSetting s{name, {}, kDefaultInterval, kDefaultMargin};
    if (name == "off") {
      s.args = {"--reconcile-interval=0"};
      s.interval = absl::ZeroDuration();
    } else if (name != "default") {
      std::vector<std::string> parts = absl::StrSplit(name, '/');
      if (parts.size() > 2 || !absl::ParseDuration(parts[0], &s.interval) ||
          s.interval <= absl::ZeroDuration() ||
          (parts.size() == 2 && !absl::ParseDuration(parts[1], &s.margin))) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad --reconcile setting ", name,
                         " (off, default, <interval> or <interval>/<margin>)"));
      }
      s.args = {absl::StrCat("--reconcile-interval=", parts[0])};
      if (parts.size() == 2) {
        s.args.push_back(absl::StrCat("--reconcile-margin=", parts[1]));
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::pair<int, int>> AlternatedOrder(int settings, int rounds) {
  std::vector<std::pair<int, int>> order;
  for (int r = 0; r < rounds; ++r) {
    for (int i = 0; i < settings; ++i) {
      order.emplace_back(r % 2 == 0 ? i : settings - 1 - i, r);
    }
  }
  return order;
}

ReconcileSnapshot TakeReconcileSnapshot(pid_t outboxd, pid_t postmaster) {
  return {ThreadsCpuSeconds(outboxd, "reconciler"),
          ReapedChildrenCpuSeconds(postmaster)};
}

absl::Status ResetStatements(BenchEnv& env) {
  return env.pg().Exec("postgres", "SELECT pg_stat_statements_reset()");
}

absl::StatusOr<nlohmann::json> PublisherStatements(BenchEnv& env) {
  std::string sql = kStatementsSql;
  sql.replace(sql.find("%ROLE%"), 6, kPublisherRole);
  auto text = env.pg().Query("postgres", sql);
  if (!text.ok()) return text.status();
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded())
    return absl::InternalError("pg_stat_statements: " + *text);
  return j;
}

nlohmann::json ReconcileFigures(const ReconcileSetting& setting,
                                const ReconcileSnapshot& before,
                                const ReconcileSnapshot& after,
                                const nlohmann::json& statements,
                                double window_s) {
  // One "state" statement a pass, the first (which only takes the
  // reconciler's start) apart.
  const double passes = std::max(Num(statements, "clock", "calls"),
                                 Num(statements, "state", "calls"));
  const double thread_s = after.thread_cpu_s - before.thread_cpu_s;
  const double reaped_s = after.reaped_cpu_s - before.reaped_cpu_s;
  double exec_ms = 0;
  for (const char* g : {"window", "missing_rows", "clock", "state", "table"})
    exec_ms += Num(statements, g, "exec_ms");
  const double per = passes > 0 ? 1.0 / passes : 0.0;
  const double interval_s = absl::ToDoubleSeconds(setting.interval);
  const double thread_ms_per_pass = thread_s * 1e3 * per;
  nlohmann::json j;
  j["setting"] = setting.name;
  j["interval_s"] = interval_s;
  j["margin_s"] = absl::ToDoubleSeconds(setting.margin);
  j["passes"] = passes;
  j["rows_judged_per_pass"] = Num(statements, "window", "rows") * per;
  j["missing_rows_found"] = Num(statements, "missing_rows", "rows");
  j["thread_cpu_s"] = thread_s;
  j["thread_ms_per_pass"] = thread_ms_per_pass;
  // Per pass over the interval: the steady cost, whatever the phase of the
  // passes in the window.
  j["thread_cores_steady"] =
      interval_s > 0 ? thread_ms_per_pass / 1e3 / interval_s : 0.0;
  j["postgres_exec_ms"] = exec_ms;
  j["postgres_exec_ms_per_pass"] = exec_ms * per;
  j["postgres_window_query_ms_per_pass"] =
      Num(statements, "window", "exec_ms") * per;
  j["postgres_exec_cores_steady"] =
      interval_s > 0 ? exec_ms * per / 1e3 / interval_s : 0.0;
  j["exited_backends_cpu_s"] = reaped_s;
  j["exited_backends_cores"] = window_s > 0 ? reaped_s / window_s : 0.0;
  j["statements"] = statements;
  return j;
}

nlohmann::json ReconcileSummary(const std::vector<ReconcileSetting>& settings,
                                const nlohmann::json& runs) {
  auto us = [](const nlohmann::json& r) {
    return r["outboxd"]["cpu_us_per_event"].get<double>();
  };
  auto cores = [](const nlohmann::json& r) {
    return r["outboxd"]["cores"].get<double>();
  };
  auto pg = [](const nlohmann::json& r) {
    return r["context"]["postgres_cores"].get<double>();
  };
  auto rec = [](const char* key) {
    return [key](const nlohmann::json& r) {
      return r["reconcile"][key].get<double>();
    };
  };
  const bool have_off =
      std::any_of(settings.begin(), settings.end(),
                  [](const ReconcileSetting& s) { return s.name == "off"; });
  const double off_us = have_off ? MedianOf(runs, "off", us) : 0;
  const double off_cores = have_off ? MedianOf(runs, "off", cores) : 0;
  const double off_pg = have_off ? MedianOf(runs, "off", pg) : 0;
  nlohmann::json out = nlohmann::json::array();
  for (const ReconcileSetting& s : settings) {
    nlohmann::json j;
    j["setting"] = s.name;
    int n = 0;
    for (const nlohmann::json& r : runs)
      n += r["reconcile"]["setting"] == s.name;
    j["runs"] = n;
    j["outboxd_cpu_us_per_event"] = MedianOf(runs, s.name, us);
    j["outboxd_cores"] = MedianOf(runs, s.name, cores);
    j["postgres_cores"] = MedianOf(runs, s.name, pg);
    j["rows_judged_per_pass"] =
        MedianOf(runs, s.name, rec("rows_judged_per_pass"));
    j["thread_ms_per_pass"] = MedianOf(runs, s.name, rec("thread_ms_per_pass"));
    j["thread_cores_steady"] =
        MedianOf(runs, s.name, rec("thread_cores_steady"));
    j["postgres_exec_ms_per_pass"] =
        MedianOf(runs, s.name, rec("postgres_exec_ms_per_pass"));
    j["postgres_exec_cores_steady"] =
        MedianOf(runs, s.name, rec("postgres_exec_cores_steady"));
    j["exited_backends_cores"] =
        MedianOf(runs, s.name, rec("exited_backends_cores"));
    if (have_off) {
      // Against outboxd with the reconciler off: the whole difference (the
      // passes and the per-event bookkeeping, with the machine's noise),
      // and the passes alone (the thread, at its steady rate).
      j["outboxd_cpu_vs_off_pct"] =
          Pct(j["outboxd_cpu_us_per_event"].get<double>() - off_us, off_us);
      j["thread_vs_off_pct"] =
          Pct(j["thread_cores_steady"].get<double>(), off_cores);
      j["postgres_cores_vs_off"] = j["postgres_cores"].get<double>() - off_pg;
    }
    out.push_back(j);
  }
  return out;
}

std::string ReconcileMarkdown(const std::string& broker,
                              const nlohmann::json& summary,
                              const nlohmann::json& runs) {
  std::string md = absl::StrCat("Reconciler cost, broker: ", broker, "\n\n");
  md +=
      "| reconciler | runs | outboxd CPU µs/event | outboxd cores | vs off | "
      "reconciler thread ms/pass | thread share of outboxd (off) | rows "
      "judged/pass | PostgreSQL ms/pass (its statements) | PostgreSQL cores "
      "| vs off |\n"
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const nlohmann::json& s : summary) {
    const bool off = s["setting"] == "off";
    auto vs = [&](const char* key, const char* fmt) {
      return off || !s.contains(key)
                 ? std::string("–")
                 : absl::StrFormat(fmt, s[key].get<double>());
    };
    absl::StrAppend(
        &md,
        absl::StrFormat(
            "| %s | %d | %.1f | %.3f | %s | %s | %s | %s | %s | %.2f | %s "
            "|\n",
            s["setting"].get<std::string>(), s["runs"].get<int>(),
            s["outboxd_cpu_us_per_event"].get<double>(),
            s["outboxd_cores"].get<double>(),
            vs("outboxd_cpu_vs_off_pct", "%+.1f %%"),
            off ? "–"
                : absl::StrFormat("%.0f",
                                  s["thread_ms_per_pass"].get<double>()),
            vs("thread_vs_off_pct", "%.1f %%"),
            off ? "–"
                : absl::StrFormat("%.0f",
                                  s["rows_judged_per_pass"].get<double>()),
            off ? "–"
                : absl::StrFormat("%.0f",
                                  s["postgres_exec_ms_per_pass"].get<double>()),
            s["postgres_cores"].get<double>(),
            vs("postgres_cores_vs_off", "%+.2f")));
  }
  md +=
      "\nEvery run:\n\n| # | reconciler | events in window | outboxd CPU "
      "µs/event | outboxd cores | passes | reconciler thread ms/pass | rows "
      "judged/pass | PostgreSQL ms/pass (window query) | exited backends "
      "cores | PostgreSQL cores |\n"
      "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  int i = 0;
  for (const nlohmann::json& r : runs) {
    const nlohmann::json& c = r["reconcile"];
    absl::StrAppend(
        &md,
        absl::StrFormat(
            "| %d | %s | %d | %.1f | %.3f | %.0f | %.0f | %.0f | %.0f (%.0f) "
            "| %.3f | %.2f |\n",
            ++i, c["setting"].get<std::string>(),
            r["window_events"].get<int64_t>(),
            r["outboxd"]["cpu_us_per_event"].get<double>(),
            r["outboxd"]["cores"].get<double>(), c["passes"].get<double>(),
            c["thread_ms_per_pass"].get<double>(),
            c["rows_judged_per_pass"].get<double>(),
            c["postgres_exec_ms_per_pass"].get<double>(),
            c["postgres_window_query_ms_per_pass"].get<double>(),
            c["exited_backends_cores"].get<double>(),
            r["context"]["postgres_cores"].get<double>()));
  }
  return md;
}

}  // namespace outboxd::bench
