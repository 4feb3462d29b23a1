#include "common/stop_signal.h"

#include <csignal>

namespace outboxd {
namespace {

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free,
              "the stop flag is set from a signal handler");

extern "C" void OnStopSignal(int) { g_stop.store(true); }

}  // namespace

std::atomic<bool>& InstallStopSignals() {
  static const bool installed = [] {
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

}  // namespace outboxd
