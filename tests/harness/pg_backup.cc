#include "tests/harness/pg_backup.h"

#include <unistd.h>

#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/harness/child_process.h"

namespace outboxd::testing {
namespace {

// Runs `argv` (as postgres when we are root, as the server's files are
// its); an error naming the command and its output unless it exits 0.
absl::Status Run(std::vector<std::string> argv, bool as_postgres) {
  if (as_postgres && geteuid() == 0) {
    argv.insert(argv.begin(), {"runuser", "-u", "postgres", "--"});
  }
  absl::StatusOr<CommandResult> result = RunCommand(argv, absl::Seconds(120));
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    return absl::InternalError(absl::StrCat("'", absl::StrJoin(argv, " "),
                                            "' exited with ", result->exit_code,
                                            ": ", result->output));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> TakeBaseBackup(const PgCluster& cluster,
                                           const std::string& name) {
  const std::string dir =
      (std::filesystem::path(cluster.data_dir()).parent_path() / name).string();
  absl::Status status =
      Run({cluster.bin_dir() + "/pg_basebackup", "-d", cluster.ConnInfo(), "-D",
           dir, "-X", "stream", "-c", "fast", "--no-sync"},
          /*as_postgres=*/true);
  if (!status.ok()) return status;
  return dir;
}

absl::Status RestoreBaseBackup(PgCluster& cluster, const std::string& backup) {
  absl::Status status = cluster.Crash();
  if (!status.ok()) return status;
  std::error_code ec;
  std::filesystem::remove_all(cluster.data_dir(), ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("removing ", cluster.data_dir(), ": ", ec.message()));
  }
  // cp -a keeps the owner and the 0700 mode the server insists on.
  status = Run({"cp", "-a", backup, cluster.data_dir()}, /*as_postgres=*/false);
  if (!status.ok()) return status;
  return cluster.StartAgain();
}

}  // namespace outboxd::testing
