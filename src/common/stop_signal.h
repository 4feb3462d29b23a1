// The stop flag of a main: SIGTERM and SIGINT set it (a clean stop, exit
// 0), SIGPIPE is ignored (a closed socket is an error return, not a death).
// The handler also makes StopSignalFd() readable, so that a loop sleeping
// in poll() wakes at once instead of noticing the flag on a timer.
#ifndef OUTBOXD_COMMON_STOP_SIGNAL_H_
#define OUTBOXD_COMMON_STOP_SIGNAL_H_

#include <atomic>

namespace outboxd {

// Installs the handlers (once per process; later calls only return the
// flag) and returns the flag they set. Call it from main before other
// threads start.
std::atomic<bool>& InstallStopSignals();

// Readable (and never drained: it stays readable) once a stop signal came;
// -1 before InstallStopSignals or when no pipe could be made.
int StopSignalFd();

}  // namespace outboxd

#endif  // OUTBOXD_COMMON_STOP_SIGNAL_H_
