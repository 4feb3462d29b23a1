// The stop flag of a main: SIGTERM and SIGINT set it (a clean stop, exit
// 0), SIGPIPE is ignored (a closed socket is an error return, not a death).
#ifndef OUTBOXD_COMMON_STOP_SIGNAL_H_
#define OUTBOXD_COMMON_STOP_SIGNAL_H_

#include <atomic>

namespace outboxd {

// Installs the handlers (once per process; later calls only return the
// flag) and returns the flag they set. Call it from main before other
// threads start.
std::atomic<bool>& InstallStopSignals();

}  // namespace outboxd

#endif  // OUTBOXD_COMMON_STOP_SIGNAL_H_
