// WakePipe: a non-blocking pipe whose read end a poll() loop waits on and
// whose write end something else (a signal handler, librdkafka, a fake)
// writes a byte to, to wake that loop.
//
// Threading: Notify() is async-signal-safe and may be called from any
// thread; Drain() belongs to the waiting thread.
#ifndef OUTBOXD_COMMON_WAKE_PIPE_H_
#define OUTBOXD_COMMON_WAKE_PIPE_H_

#include "absl/status/statusor.h"

namespace outboxd {

class WakePipe {
 public:
  // kInternal when the process has no file descriptors left.
  static absl::StatusOr<WakePipe> Create();
  WakePipe() = default;
  ~WakePipe();
  WakePipe(WakePipe&& other) noexcept;
  WakePipe& operator=(WakePipe&& other) noexcept;
  WakePipe(const WakePipe&) = delete;
  WakePipe& operator=(const WakePipe&) = delete;

  // Readable while a Notify() is not drained; -1 for a default-constructed
  // pipe.
  int read_fd() const { return read_fd_; }
  // Where writers write (any payload wakes the reader).
  int write_fd() const { return write_fd_; }
  // Makes read_fd() readable (a full pipe is readable already).
  void Notify() const;
  // Reads everything written so far.
  void Drain() const;

 private:
  WakePipe(int read_fd, int write_fd)
      : read_fd_(read_fd), write_fd_(write_fd) {}
  void Close();
  int read_fd_ = -1;
  int write_fd_ = -1;
};

}  // namespace outboxd

#endif  // OUTBOXD_COMMON_WAKE_PIPE_H_
