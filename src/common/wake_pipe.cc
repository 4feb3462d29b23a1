#include "common/wake_pipe.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace outboxd {

absl::StatusOr<WakePipe> WakePipe::Create() {
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
    return absl::InternalError(
        absl::StrCat("cannot create a pipe: ", std::strerror(errno)));
  }
  return WakePipe(fds[0], fds[1]);
}

WakePipe::~WakePipe() { Close(); }

WakePipe::WakePipe(WakePipe&& other) noexcept
    : read_fd_(std::exchange(other.read_fd_, -1)),
      write_fd_(std::exchange(other.write_fd_, -1)) {}

WakePipe& WakePipe::operator=(WakePipe&& other) noexcept {
  if (this != &other) {
    Close();
    read_fd_ = std::exchange(other.read_fd_, -1);
    write_fd_ = std::exchange(other.write_fd_, -1);
  }
  return *this;
}

void WakePipe::Close() {
  if (read_fd_ >= 0) close(read_fd_);
  if (write_fd_ >= 0) close(write_fd_);
  read_fd_ = write_fd_ = -1;
}

void WakePipe::Notify() const {
  if (write_fd_ < 0) return;
  const int saved = errno;  // a signal handler must not change it
  const char byte = 1;
  // EAGAIN: the pipe is full, so it is readable already.
  [[maybe_unused]] ssize_t n = write(write_fd_, &byte, 1);
  errno = saved;
}

void WakePipe::Drain() const {
  if (read_fd_ < 0) return;
  char buffer[256];
  while (read(read_fd_, buffer, sizeof(buffer)) > 0) {
  }
}

}  // namespace outboxd
