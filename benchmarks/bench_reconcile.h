// The reconciler's cost (benchmarks/README.md, benchmark 9), as live_bench
// measures it with --reconcile: the same live load with outboxd's
// reconciler off, at its default, or at another interval, in alternated
// order, and what the reconciler itself costs on both sides:
//
//   outboxd    CPU of its thread "reconciler" (the passes; the per-event
//              bookkeeping of the acknowledged ids runs on the publishing
//              thread and shows only in the comparison with "off")
//   PostgreSQL the reconciler's statements in pg_stat_statements (the
//              publisher's role; calls, rows, execution time), and the CPU
//              of the backends that exited in the window (the reconciler
//              opens a connection per pass; autovacuum workers count too)
//
// Measures only. Threading: one thread.
#ifndef OUTBOXD_BENCHMARKS_BENCH_RECONCILE_H_
#define OUTBOXD_BENCHMARKS_BENCH_RECONCILE_H_

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "benchmarks/bench_env.h"
#include "nlohmann/json.hpp"

namespace outboxd::bench {

// One reconciler setting: "off" (--reconcile-interval=0), "default" (no
// flag: 30 s, margin 1 min), "<interval>" (e.g. 5s) or
// "<interval>/<margin>" (e.g. 30s/20s).
struct ReconcileSetting {
  std::string name;
  std::vector<std::string> args;  // outboxd's flags
  absl::Duration interval;        // 0 = off
  absl::Duration margin;
};
absl::StatusOr<std::vector<ReconcileSetting>> ParseReconcileSettings(
    const std::vector<std::string>& names);

// (setting index, round) of every run: `rounds` rounds, every other one in
// reverse order (off, default, 5s, 5s, default, off, ...), so that a drift
// of the machine's load does not favour one setting.
std::vector<std::pair<int, int>> AlternatedOrder(int settings, int rounds);

// Readings at one end of the window.
struct ReconcileSnapshot {
  double thread_cpu_s = 0;  // outboxd's "reconciler" threads
  double reaped_cpu_s = 0;  // the postmaster's exited children
};
ReconcileSnapshot TakeReconcileSnapshot(pid_t outboxd, pid_t postmaster);

// pg_stat_statements_reset(): the window's statements only.
absl::Status ResetStatements(BenchEnv& env);
// The publisher role's statements since the reset, grouped: "window" (the
// rows a pass judges), "missing_rows", "clock" (one a pass), "state",
// "table" (the table's columns, each pass) and "other" (not the
// reconciler's), each {calls, rows, exec_ms}.
absl::StatusOr<nlohmann::json> PublisherStatements(BenchEnv& env);

// The run's "reconcile" object: the setting, passes, CPU per pass, rows
// per pass, the PostgreSQL figures.
nlohmann::json ReconcileFigures(const ReconcileSetting& setting,
                                const ReconcileSnapshot& before,
                                const ReconcileSnapshot& after,
                                const nlohmann::json& statements,
                                double window_s);

// Per setting over its runs: medians, and the shares of outboxd's CPU
// against the "off" runs' median (when there are any).
nlohmann::json ReconcileSummary(const std::vector<ReconcileSetting>& settings,
                                const nlohmann::json& runs);
std::string ReconcileMarkdown(const std::string& broker,
                              const nlohmann::json& summary,
                              const nlohmann::json& runs);

}  // namespace outboxd::bench

#endif  // OUTBOXD_BENCHMARKS_BENCH_RECONCILE_H_
