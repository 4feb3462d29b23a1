#include "tests/harness/child_process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace outboxd::testing {
namespace {

absl::Status ErrnoStatus(absl::string_view what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

void CloseFd(int* fd) {
  if (*fd >= 0) {
    close(*fd);
    *fd = -1;
  }
}

int ExitCodeFromWaitStatus(int wstatus) {
  if (WIFEXITED(wstatus)) return WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
  return -1;
}

// How the child's standard streams are wired.
struct SpawnPlan {
  bool pipe_stdin = false;
  bool capture_stdout = true;
  bool stderr_to_stdout = false;  // only with capture_stdout
  std::string stderr_file;        // "" = inherited
};

struct Spawned {
  pid_t pid = -1;
  int stdin_fd = -1;   // parent's write end, or -1
  int stdout_fd = -1;  // parent's read end, or -1
};

// fork + execvpe. Everything the child needs is prepared before fork so the
// child only calls async-signal-safe functions. An exec failure is reported
// back through a close-on-exec pipe so Start can return it as a Status.
absl::StatusOr<Spawned> Spawn(const std::vector<std::string>& argv,
                              const std::map<std::string, std::string>& env,
                              const SpawnPlan& plan) {
  if (argv.empty()) return absl::InvalidArgumentError("empty argv");

  std::vector<char*> c_argv;
  for (const std::string& arg : argv)
    c_argv.push_back(const_cast<char*>(arg.c_str()));
  c_argv.push_back(nullptr);

  // Inherited environment with `env` overriding same-named variables.
  std::vector<std::string> env_strings;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    std::string name = entry.substr(0, entry.find('='));
    if (env.count(name) == 0) env_strings.push_back(std::move(entry));
  }
  for (const auto& [name, value] : env) {
    env_strings.push_back(absl::StrCat(name, "=", value));
  }
  std::vector<char*> c_env;
  for (std::string& entry : env_strings) c_env.push_back(entry.data());
  c_env.push_back(nullptr);

  int stdin_pipe[2] = {-1, -1};
  int stdout_pipe[2] = {-1, -1};
  int exec_err_pipe[2] = {-1, -1};
  int stdin_src = -1;
  int stderr_fd = -1;
  auto cleanup = [&] {
    for (int* fd :
         {&stdin_pipe[0], &stdin_pipe[1], &stdout_pipe[0], &stdout_pipe[1],
          &exec_err_pipe[0], &exec_err_pipe[1], &stdin_src, &stderr_fd}) {
      CloseFd(fd);
    }
  };

  if (plan.pipe_stdin) {
    if (pipe2(stdin_pipe, O_CLOEXEC) != 0) {
      int err = errno;
      cleanup();
      return ErrnoStatus("pipe2", err);
    }
  } else {
    stdin_src = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (stdin_src < 0) {
      int err = errno;
      cleanup();
      return ErrnoStatus("open /dev/null", err);
    }
  }
  if (plan.capture_stdout && pipe2(stdout_pipe, O_CLOEXEC) != 0) {
    int err = errno;
    cleanup();
    return ErrnoStatus("pipe2", err);
  }
  if (!plan.stderr_file.empty()) {
    stderr_fd = open(plan.stderr_file.c_str(),
                     O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (stderr_fd < 0) {
      int err = errno;
      cleanup();
      return ErrnoStatus(absl::StrCat("open ", plan.stderr_file), err);
    }
  }
  if (pipe2(exec_err_pipe, O_CLOEXEC) != 0) {
    int err = errno;
    cleanup();
    return ErrnoStatus("pipe2", err);
  }

  pid_t pid = fork();
  if (pid < 0) {
    int err = errno;
    cleanup();
    return ErrnoStatus("fork", err);
  }
  if (pid == 0) {
    // Child: async-signal-safe calls only. dup2 clears FD_CLOEXEC on the
    // target descriptors, so 0/1/2 survive exec while the originals do not.
    sigset_t empty;
    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, nullptr);
    signal(SIGPIPE, SIG_DFL);
    int in = plan.pipe_stdin ? stdin_pipe[0] : stdin_src;
    bool ok = dup2(in, STDIN_FILENO) >= 0;
    if (ok && plan.capture_stdout) {
      ok = dup2(stdout_pipe[1], STDOUT_FILENO) >= 0;
    }
    if (ok && plan.capture_stdout && plan.stderr_to_stdout) {
      ok = dup2(stdout_pipe[1], STDERR_FILENO) >= 0;
    } else if (ok && stderr_fd >= 0) {
      ok = dup2(stderr_fd, STDERR_FILENO) >= 0;
    }
    if (ok) execvpe(c_argv[0], c_argv.data(), c_env.data());
    int err = errno;
    ssize_t ignored = write(exec_err_pipe[1], &err, sizeof(err));
    (void)ignored;
    _exit(127);
  }

  // Parent.
  CloseFd(&exec_err_pipe[1]);
  CloseFd(&stdin_pipe[0]);
  CloseFd(&stdout_pipe[1]);
  CloseFd(&stdin_src);
  CloseFd(&stderr_fd);

  int child_errno = 0;
  ssize_t n;
  do {
    n = read(exec_err_pipe[0], &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  CloseFd(&exec_err_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof(child_errno))) {
    int wstatus;
    while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    cleanup();
    absl::Status status =
        ErrnoStatus(absl::StrCat("exec ", argv[0]), child_errno);
    if (child_errno == ENOENT) {
      return absl::NotFoundError(status.message());
    }
    return status;
  }

  Spawned spawned;
  spawned.pid = pid;
  spawned.stdin_fd = stdin_pipe[1];
  spawned.stdout_fd = stdout_pipe[0];
  return spawned;
}

// Milliseconds left until `deadline`, clamped to [0, cap_ms].
int MillisUntil(absl::Time deadline, int cap_ms) {
  absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(left) + 1;
  return static_cast<int>(ms < cap_ms ? ms : cap_ms);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    const ChildOptions& options) {
  SpawnPlan plan;
  plan.pipe_stdin = options.pipe_stdin;
  plan.capture_stdout = options.capture_stdout;
  plan.stderr_file = options.stderr_file;
  absl::StatusOr<Spawned> spawned = Spawn(options.argv, options.env, plan);
  if (!spawned.ok()) return spawned.status();
  std::unique_ptr<ChildProcess> child(new ChildProcess());
  child->pid_ = spawned->pid;
  child->stdin_fd_ = spawned->stdin_fd;
  child->stdout_fd_ = spawned->stdout_fd;
  return child;
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !exit_code_.has_value()) {
    kill(pid_, SIGKILL);
    int wstatus;
    while (waitpid(pid_, &wstatus, 0) < 0 && errno == EINTR) {
    }
  }
  CloseFd(&stdin_fd_);
  CloseFd(&stdout_fd_);
}

std::optional<std::string> ChildProcess::ReadLine(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    size_t newline = stdout_buffer_.find('\n');
    if (newline != std::string::npos) {
      std::string line = stdout_buffer_.substr(0, newline);
      stdout_buffer_.erase(0, newline + 1);
      return line;
    }
    if (stdout_fd_ < 0) {
      // EOF seen earlier: hand out a final unterminated line once.
      if (stdout_buffer_.empty()) return std::nullopt;
      std::string line = std::move(stdout_buffer_);
      stdout_buffer_.clear();
      return line;
    }
    pollfd pfd{stdout_fd_, POLLIN, 0};
    int ready = poll(&pfd, 1, MillisUntil(deadline, 1000));
    if (ready < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    if (ready == 0) {
      if (absl::Now() >= deadline) return std::nullopt;
      continue;
    }
    char buf[4096];
    ssize_t n = read(stdout_fd_, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      CloseFd(&stdout_fd_);
    } else if (n == 0) {
      CloseFd(&stdout_fd_);
    } else {
      stdout_buffer_.append(buf, static_cast<size_t>(n));
    }
  }
}

bool ChildProcess::WriteStdin(const std::string& text) {
  if (stdin_fd_ < 0) return false;
  // SIGPIPE would kill the test process when the child is gone; block it for
  // this thread and swallow a pending one so the write reports EPIPE instead.
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  bool ok = true;
  size_t written = 0;
  while (written < text.size()) {
    ssize_t n = write(stdin_fd_, text.data() + written, text.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE) {
        timespec zero{0, 0};
        sigtimedwait(&pipe_set, nullptr, &zero);
      }
      ok = false;
      break;
    }
    written += static_cast<size_t>(n);
  }
  pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  return ok;
}

void ChildProcess::CloseStdin() { CloseFd(&stdin_fd_); }

void ChildProcess::Signal(int sig) {
  if (pid_ > 0 && !exit_code_.has_value()) kill(pid_, sig);
}

std::optional<int> ChildProcess::Wait(absl::Duration timeout) {
  if (exit_code_.has_value()) return exit_code_;
  absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int wstatus;
    pid_t r = waitpid(pid_, &wstatus, WNOHANG);
    if (r == pid_) {
      exit_code_ = ExitCodeFromWaitStatus(wstatus);
      return exit_code_;
    }
    if (r < 0 && errno != EINTR) {
      // ECHILD: reaped elsewhere; nothing more can be learned.
      exit_code_ = -1;
      return exit_code_;
    }
    if (absl::Now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(
        std::chrono::milliseconds(MillisUntil(deadline, 10)));
  }
}

bool ChildProcess::Running() { return !Wait(absl::ZeroDuration()).has_value(); }

absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         absl::Duration timeout) {
  SpawnPlan plan;
  plan.capture_stdout = true;
  plan.stderr_to_stdout = true;
  absl::StatusOr<Spawned> spawned = Spawn(argv, {}, plan);
  if (!spawned.ok()) return spawned.status();
  const pid_t pid = spawned->pid;
  int out_fd = spawned->stdout_fd;
  absl::Time deadline = absl::Now() + timeout;
  std::string output;
  std::optional<int> exit_code;

  // Reads until the child exits, then drains what is already buffered. A
  // daemon started by the command (pg_ctl start) may keep the pipe open, so
  // EOF alone cannot be the end.
  auto drain = [&](int poll_ms) {
    while (out_fd >= 0) {
      pollfd pfd{out_fd, POLLIN, 0};
      int ready = poll(&pfd, 1, poll_ms);
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return;
      char buf[4096];
      ssize_t n = read(out_fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        CloseFd(&out_fd);
        return;
      }
      output.append(buf, static_cast<size_t>(n));
      poll_ms = 0;
    }
  };

  while (!exit_code.has_value()) {
    drain(MillisUntil(deadline, 20));
    int wstatus;
    pid_t r = waitpid(pid, &wstatus, WNOHANG);
    if (r == pid) {
      exit_code = ExitCodeFromWaitStatus(wstatus);
      break;
    }
    if (r < 0 && errno != EINTR) {
      CloseFd(&out_fd);
      return ErrnoStatus("waitpid", errno);
    }
    if (absl::Now() >= deadline) {
      kill(pid, SIGKILL);
      while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
      }
      drain(0);
      CloseFd(&out_fd);
      return absl::DeadlineExceededError(absl::StrCat(
          "'", absl::StrJoin(argv, " "), "' still running after ",
          absl::FormatDuration(timeout), "; killed. Output:\n", output));
    }
    if (out_fd < 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  drain(0);
  CloseFd(&out_fd);
  return CommandResult{*exit_code, std::move(output)};
}

}  // namespace outboxd::testing
