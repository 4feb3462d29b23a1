#include "common/stop_signal.h"

#include <csignal>

#include "common/wake_pipe.h"

namespace outboxd {
namespace {

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free,
              "the stop flag is set from a signal handler");
// Made before the handlers are installed, never destroyed (a handler may
// run during exit).
WakePipe* g_stop_pipe = nullptr;

extern "C" void OnStopSignal(int) {
  g_stop.store(true);
  if (g_stop_pipe != nullptr) g_stop_pipe->Notify();  // write(2): safe
}

}  // namespace

std::atomic<bool>& InstallStopSignals() {
  static const bool installed = [] {
    absl::StatusOr<WakePipe> pipe = WakePipe::Create();
    if (pipe.ok()) g_stop_pipe = new WakePipe(*std::move(pipe));
    struct sigaction sa = {};
    sa.sa_handler = OnStopSignal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);
    return true;
  }();
  (void)installed;
  return g_stop;
}

int StopSignalFd() {
  return g_stop_pipe != nullptr ? g_stop_pipe->read_fd() : -1;
}

}  // namespace outboxd
