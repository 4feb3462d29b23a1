// ChildProcess: runs a program as a child for integration tests, with its
// stdout readable line by line and stderr passed through (or to a file).
#ifndef OUTBOXD_TESTS_HARNESS_CHILD_PROCESS_H_
#define OUTBOXD_TESTS_HARNESS_CHILD_PROCESS_H_

#include <sys/types.h>

#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace outboxd::testing {

// The whole file (a child's log); "" when it cannot be read.
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct ChildOptions {
  std::vector<std::string> argv;           // argv[0] is the program path
  std::map<std::string, std::string> env;  // added to the inherited env
  bool pipe_stdin = false;                 // else /dev/null
  bool capture_stdout = true;              // else inherited
  std::string stderr_file;                 // "" = inherited
};

class ChildProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      const ChildOptions& options);
  // Kills (SIGKILL) and reaps the child if it is still running.
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  // Next line of stdout without the newline; nullopt on EOF or timeout.
  std::optional<std::string> ReadLine(absl::Duration timeout);
  // Writes to the child's stdin (pipe_stdin must be set).
  bool WriteStdin(const std::string& text);
  void CloseStdin();
  void Signal(int sig);
  // Exit code (or 128+signal); nullopt if still running after `timeout`.
  std::optional<int> Wait(absl::Duration timeout);
  bool Running();

 private:
  ChildProcess() = default;
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  std::string stdout_buffer_;
  std::optional<int> exit_code_;
};

// Runs a command to completion; returns its exit code and combined output.
struct CommandResult {
  int exit_code;
  std::string output;
};
absl::StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                         absl::Duration timeout);

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_HARNESS_CHILD_PROCESS_H_
