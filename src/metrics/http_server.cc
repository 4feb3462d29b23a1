#include "metrics/http_server.h"

#include <httplib.h>

#include <chrono>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "spdlog/spdlog.h"

namespace outboxd::metrics {
namespace {

// httplib serves each connection on one task for the connection's whole
// life, so idle keep-alive connections and slow clients hold tasks. This
// queue starts a thread whenever a connection arrives and none is free, up
// to kMaxThreads, so a handful of them cannot starve /healthz; threads stay
// for later connections (bounded by the cap).
class ElasticTaskQueue : public httplib::TaskQueue {
 public:
  explicit ElasticTaskQueue(size_t max_threads) : max_threads_(max_threads) {}
  ~ElasticTaskQueue() override = default;

  void enqueue(std::function<void()> fn) override {
    absl::MutexLock lock(&mu_);
    jobs_.push_back(std::move(fn));
    if (idle_ < jobs_.size() && threads_.size() < max_threads_) {
      threads_.emplace_back([this] { Work(); });
    }
  }

  void shutdown() override {
    {
      absl::MutexLock lock(&mu_);
      shutdown_ = true;
    }
    // No thread is added once shutdown_ is set: joining outside the lock.
    for (std::thread& t : threads_) t.join();
  }

 private:
  void Work() {
    while (true) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        ++idle_;
        mu_.Await(absl::Condition(this, &ElasticTaskQueue::HasWork));
        --idle_;
        if (jobs_.empty()) return;  // shutdown
        fn = std::move(jobs_.front());
        jobs_.pop_front();
      }
      fn();
    }
  }

  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !jobs_.empty() || shutdown_;
  }

  const size_t max_threads_;
  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  size_t idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  // Appended under mu_ until shutdown_, then joined by shutdown() alone.
  std::vector<std::thread> threads_;
};

}  // namespace

// What the handlers reach, cleared when the server is abandoned at stop.
struct MetricsServer::HandlerState {
  absl::Mutex mu;
  const Registry* registry ABSL_GUARDED_BY(mu) = nullptr;
  std::function<std::string()> not_ready ABSL_GUARDED_BY(mu);
  // Notified when the server thread has ended (every connection closed).
  absl::Notification stopped;
};

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address, const Registry* registry,
    std::function<std::string()> not_ready) {
  size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' is not HOST:PORT"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);  // [::1]:9187
  }
  if (host.empty()) host = "0.0.0.0";

  std::unique_ptr<MetricsServer> s(new MetricsServer());
  s->server_ = std::make_unique<httplib::Server>();
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let
  // a second outboxd silently share the port.
  // The listening socket is the first one these options are applied to.
  auto listen_socket = std::make_shared<socket_t>(INVALID_SOCKET);
  s->server_->set_socket_options([listen_socket](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (*listen_socket == INVALID_SOCKET) *listen_socket = sock;
  });
  // Bounds on what one connection may hold (README "Monitoring"): an idle
  // connection is closed after kKeepAliveTimeout, a read that gets no byte
  // for kReadTimeout fails, a connection serves at most kKeepAliveRequests.
  // Slow clients still hold a thread each, so the pool grows on demand up
  // to kMaxThreads connections served at once.
  s->server_->set_keep_alive_timeout(kKeepAliveTimeoutSeconds);
  s->server_->set_keep_alive_max_count(kKeepAliveRequests);
  s->server_->set_read_timeout(kReadTimeout);
  s->server_->set_write_timeout(kWriteTimeout);
  s->server_->new_task_queue = [] { return new ElasticTaskQueue(kMaxThreads); };
  s->state_ = std::make_shared<HandlerState>();
  {
    absl::MutexLock lock(&s->state_->mu);
    s->state_->registry = registry;
    s->state_->not_ready = std::move(not_ready);
  }
  std::shared_ptr<HandlerState> state = s->state_;
  s->server_->Get("/metrics",
                  [state](const httplib::Request&, httplib::Response& res) {
                    absl::MutexLock lock(&state->mu);
                    if (state->registry == nullptr) {
                      res.status = 503;
                      res.set_content("stopping\n", "text/plain");
                      return;
                    }
                    res.set_content(state->registry->Exposition(),
                                    "text/plain; version=0.0.4; charset=utf-8");
                  });
  s->server_->Get("/healthz",
                  [](const httplib::Request&, httplib::Response& res) {
                    res.set_content("ok\n", "text/plain");
                  });
  s->server_->Get(
      "/readyz", [state](const httplib::Request&, httplib::Response& res) {
        absl::MutexLock lock(&state->mu);
        std::string why;
        if (state->registry == nullptr) {
          why = "stopping";
        } else if (state->not_ready) {
          why = state->not_ready();
        }
        res.status = why.empty() ? 200 : 503;
        res.set_content(why.empty() ? std::string("ready\n")
                                    : absl::StrCat("not ready: ", why, "\n"),
                        "text/plain");
      });
  if (port == 0) {
    s->port_ = s->server_->bind_to_any_port(host);
  } else {
    s->port_ = s->server_->bind_to_port(host, port) ? port : -1;
  }
  if (s->port_ < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " for metrics"));
  }
  // Debian's cpp-httplib listens with a backlog of 5: a burst of
  // connections (idle clients, a probe among them) would see SYNs dropped
  // and retried after 1 s, 3 s, ... Listening again only raises the backlog.
  if (*listen_socket != INVALID_SOCKET) listen(*listen_socket, SOMAXCONN);
  s->host_ = host;
  httplib::Server* server = s->server_.get();
  s->thread_ = std::thread([server, state] {
    server->listen_after_bind();
    state->stopped.Notify();
  });
  return s;
}

MetricsServer::~MetricsServer() {
  // stop() before the thread entered listen would be lost: wait for it.
  for (int i = 0; i < 2000 && server_ != nullptr && !server_->is_running();
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (server_ != nullptr) server_->stop();
  if (!thread_.joinable()) return;
  if (state_->stopped.WaitForNotificationWithTimeout(
          absl::FromChrono(kStopTimeout))) {
    thread_.join();
    return;
  }
  // A client still sends (slowly) or holds a read: do not wait for it.
  // The handlers stop touching the registry and `not_ready`; the server and its
  // threads are left to end with the connection (or with the process).
  {
    absl::MutexLock lock(&state_->mu);
    state_->registry = nullptr;
    state_->not_ready = nullptr;
  }
  spdlog::warn(
      "metrics server: a connection is still open {} after stop; not "
      "waiting for it",
      absl::FormatDuration(absl::FromChrono(kStopTimeout)));
  thread_.detach();
  (void)server_.release();  // still used by the detached threads
}

}  // namespace outboxd::metrics
