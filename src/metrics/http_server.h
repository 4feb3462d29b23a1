// MetricsServer: serves /metrics (Prometheus text), /healthz and /readyz
// over HTTP (cpp-httplib) on a thread of its own.
//
//   /metrics  200, text/plain; version=0.0.4: Registry::Exposition()
//             (prometheus-cpp's TextSerializer)
//   /healthz  200 "ok" while the process runs (the server answers)
//   /readyz   200 "ready" when `not_ready()` is empty, else 503
//             "not ready: " and its reason
//
// Threading: Start() and the destructor are called from one thread; the
// handlers run on the server's threads and only call Registry::Exposition
// and `not_ready`, both thread-safe. The registry must outlive the server; once
// the destructor returned, no handler calls either any more.
//
// Why cpp-httplib and not prometheus-cpp-pull's civetweb Exposer: the
// Exposer serves collectables only, so /healthz and /readyz (503 when not
// ready) would need a second server or civetweb handlers of our own; and the
// bounds below (keep-alive, read and write timeouts, threads started on
// demand, a stop that does not wait for a slow client) are tested here and
// would have to be rebuilt on civetweb's fixed worker pool.
#ifndef OUTBOXD_METRICS_HTTP_SERVER_H_
#define OUTBOXD_METRICS_HTTP_SERVER_H_

#include <chrono>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "metrics/outboxd_metrics.h"

namespace httplib {
class Server;
}

namespace outboxd::metrics {

class MetricsServer {
 public:
  // Limits per connection, so that idle or slow clients cannot starve the
  // health endpoints (README "Monitoring").
  static constexpr time_t kKeepAliveTimeoutSeconds = 2;
  static constexpr std::chrono::milliseconds kReadTimeout{2000};
  static constexpr std::chrono::milliseconds kWriteTimeout{2000};
  static constexpr size_t kKeepAliveRequests = 100;
  // Connections served at once (one thread each, started on demand).
  static constexpr size_t kMaxThreads = 128;
  // How long the destructor waits for open connections to end (an idle
  // keep-alive connection ends within kKeepAliveTimeoutSeconds). A client
  // still sending after that is abandoned, not waited for, so that a slow
  // client cannot hold up outboxd's exit.
  static constexpr std::chrono::milliseconds kStopTimeout{3000};

  // `address` is HOST:PORT (PORT 0: an ephemeral port, see port()).
  // kInvalidArgument for a malformed address, kUnavailable when it cannot
  // be bound.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const std::string& address, const Registry* registry,
      std::function<std::string()> not_ready);
  // Stops the server; waits at most kStopTimeout for its connections.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }
  const std::string& host() const { return host_; }

 private:
  struct HandlerState;
  MetricsServer() = default;
  std::unique_ptr<httplib::Server> server_;
  // Shared with the handlers and the server thread: outlives an abandoned
  // server.
  std::shared_ptr<HandlerState> state_;
  std::thread thread_;
  std::string host_;
  int port_ = 0;
};

}  // namespace outboxd::metrics

#endif  // OUTBOXD_METRICS_HTTP_SERVER_H_
