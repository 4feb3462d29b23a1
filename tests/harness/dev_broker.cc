#include "tests/harness/dev_broker.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

#ifndef OUTBOXD_DEVBROKER_BINARY
#error "OUTBOXD_DEVBROKER_BINARY must name the outbox-devbroker binary"
#endif

namespace outboxd::testing {
namespace {

// Startup includes binding N listeners; replies to commands are immediate
// except broker state changes, which the mock applies on its next I/O poll
// (up to about a second).
constexpr absl::Duration kStartTimeout = absl::Seconds(20);
constexpr absl::Duration kCommandTimeout = absl::Seconds(10);

}  // namespace

absl::StatusOr<std::unique_ptr<DevBroker>> DevBroker::Start(int brokers,
                                                            int partitions) {
  ChildOptions options;
  options.argv = {OUTBOXD_DEVBROKER_BINARY, absl::StrCat("--brokers=", brokers),
                  absl::StrCat("--partitions=", partitions),
                  "--log-level=warn"};
  options.pipe_stdin = true;
  options.capture_stdout = true;
  ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> process,
                   ChildProcess::Start(options));

  std::optional<std::string> line = process->ReadLine(kStartTimeout);
  if (!line.has_value()) {
    std::optional<int> exit_code = process->Wait(absl::ZeroDuration());
    return absl::UnavailableError(absl::StrCat(
        "outbox-devbroker printed no BOOTSTRAP line (",
        exit_code.has_value() ? absl::StrCat("exit code ", *exit_code)
                              : std::string("still running"),
        "); see its stderr"));
  }
  absl::string_view bootstrap = *line;
  if (!absl::ConsumePrefix(&bootstrap, "BOOTSTRAP=") || bootstrap.empty()) {
    return absl::InternalError(
        absl::StrCat("outbox-devbroker: unexpected first line '", *line, "'"));
  }

  std::unique_ptr<DevBroker> broker(new DevBroker());
  broker->process_ = std::move(process);
  broker->bootstrap_ = std::string(bootstrap);
  broker->brokers_ = brokers;
  return broker;
}

absl::Status DevBroker::InjectError(int api_key, const std::string& error,
                                    int count) {
  return Command(absl::StrCat("error ", api_key, " ", error, " ", count));
}

absl::Status DevBroker::ClearErrors(int api_key) {
  return Command(absl::StrCat("clear ", api_key));
}

absl::Status DevBroker::Command(const std::string& line) {
  if (process_ == nullptr || !process_->Running()) {
    return absl::FailedPreconditionError("outbox-devbroker is not running");
  }
  if (!process_->WriteStdin(line + "\n")) {
    return absl::UnavailableError(
        absl::StrCat("outbox-devbroker: cannot send '", line, "'"));
  }
  std::optional<std::string> reply = process_->ReadLine(kCommandTimeout);
  if (!reply.has_value()) {
    return absl::DeadlineExceededError(
        absl::StrCat("outbox-devbroker: no reply to '", line, "'"));
  }
  if (*reply == "ok") return absl::OkStatus();
  absl::string_view reason = *reply;
  if (absl::ConsumePrefix(&reason, "error: ")) {
    return absl::InvalidArgumentError(
        absl::StrCat("outbox-devbroker '", line, "': ", reason));
  }
  return absl::InternalError(absl::StrCat(
      "outbox-devbroker: unexpected reply '", *reply, "' to '", line, "'"));
}

absl::Status DevBroker::CreateTopic(const std::string& topic, int partitions) {
  return Command(absl::StrCat("topic ", topic, " ", partitions));
}

absl::Status DevBroker::SetBrokerDown(int broker_id) {
  return Command(absl::StrCat("down ", broker_id));
}

absl::Status DevBroker::SetBrokerUp(int broker_id) {
  return Command(absl::StrCat("up ", broker_id));
}

absl::Status DevBroker::SetAllBrokersDown() { return Command("down all"); }

absl::Status DevBroker::SetAllBrokersUp() { return Command("up all"); }

absl::Status DevBroker::SetRtt(int broker_id, int rtt_ms) {
  return Command(absl::StrCat("rtt ", broker_id, " ", rtt_ms));
}

}  // namespace outboxd::testing
