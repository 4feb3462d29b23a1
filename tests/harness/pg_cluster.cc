#include "tests/harness/pg_cluster.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/harness/child_process.h"

namespace outboxd::testing {
namespace {

constexpr absl::Duration kInitdbTimeout = absl::Seconds(120);
constexpr absl::Duration kPgCtlTimeout = absl::Seconds(90);
constexpr absl::Duration kFetchTimeout = absl::Seconds(600);

bool RunningAsRoot() { return geteuid() == 0; }

std::string EnvOr(const char* name, const std::string& fallback) {
  const char* env = std::getenv(name);
  return env != nullptr && *env != '\0' ? std::string(env) : fallback;
}

// The command prefix that runs a PostgreSQL tool as `postgres` when we are
// root (the server refuses to run as root).
std::vector<std::string> AsPostgres(const std::string& bin_dir,
                                    const std::string& tool) {
  std::vector<std::string> argv;
  if (RunningAsRoot()) argv = {"runuser", "-u", "postgres", "--"};
  argv.push_back(absl::StrCat(bin_dir, "/", tool));
  return argv;
}

// Single-quotes `word` for /bin/sh: pg_ctl hands -o to the shell.
std::string ShellQuote(const std::string& word) {
  return absl::StrCat("'", absl::StrReplaceAll(word, {{"'", "'\\''"}}), "'");
}

// Single-quotes `word` as a SQL or postgresql.conf literal.
std::string SqlQuote(const std::string& word) {
  return absl::StrCat("'", absl::StrReplaceAll(word, {{"'", "''"}}), "'");
}

std::string ReadFileTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  if (text.size() > max_bytes) text = text.substr(text.size() - max_bytes);
  return text;
}

absl::Status RunChecked(const std::vector<std::string>& argv,
                        absl::Duration timeout, const std::string& log_file) {
  absl::StatusOr<CommandResult> result = RunCommand(argv, timeout);
  if (!result.ok()) return result.status();
  if (result->exit_code != 0) {
    std::string message =
        absl::StrCat("'", absl::StrJoin(argv, " "), "' exited with ",
                     result->exit_code, ":\n", result->output);
    if (!log_file.empty()) {
      absl::StrAppend(&message, "\nserver log tail:\n",
                      ReadFileTail(log_file, 4000));
    }
    return absl::InternalError(message);
  }
  return absl::OkStatus();
}

// A short-lived libpq connection for harness queries.
struct PgConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct PgResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgConn = std::unique_ptr<PGconn, PgConnDeleter>;
using PgResult = std::unique_ptr<PGresult, PgResultDeleter>;

// Runs `sql` on `conn`; the result of a query that returned rows or none.
absl::StatusOr<PgResult> Run(PGconn* conn, const std::string& sql) {
  PgResult result(PQexec(conn, sql.c_str()));
  ExecStatusType st =
      result != nullptr ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    return absl::InternalError(
        absl::StrCat("test cluster query failed: ", sql, ": ",
                     absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn))));
  }
  return result;
}

absl::Status ChownToPostgres(const std::string& path) {
  if (!RunningAsRoot()) return absl::OkStatus();
  passwd* pw = getpwnam("postgres");
  if (pw == nullptr) {
    return absl::FailedPreconditionError(
        "running as root but there is no 'postgres' user to run the "
        "server as");
  }
  if (lchown(path.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
    return absl::InternalError(
        absl::StrCat("chown ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// What pg_basebackup leaves out of a base backup (its excludeDirContents and
// excludeFiles), pg_wal's contents included: the standby streams the WAL
// from the backup's start through its slot, which was reserved before.
bool LeaveOutContents(const std::string& relative) {
  for (const char* dir :
       {"pg_wal", "pg_replslot", "pg_stat_tmp", "pg_dynshmem", "pg_notify",
        "pg_serial", "pg_snapshots", "pg_subtrans"}) {
    if (relative == dir) return true;
  }
  return false;
}
bool LeaveOutFile(const std::string& name) {
  for (const char* file :
       {"postmaster.pid", "postmaster.opts", "pg_internal.init", "backup_label",
        "tablespace_map", "current_logfiles", "postgresql.auto.conf.tmp",
        "standby.signal", "recovery.signal"}) {
    if (name == file) return true;
  }
  return absl::StartsWith(name, "pgsql_tmp");
}

// Copies the data directory `from` of a running server into `to` (owned by
// postgres, 0700), leaving out what a base backup does. Files that vanish
// while copied (a running server removes some) are skipped; WAL replay
// from the backup's start makes the copy consistent.
absl::Status CopyDataDirectory(const std::filesystem::path& from,
                               const std::filesystem::path& to) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directory(to, ec);
  if (ec) return absl::InternalError(absl::StrCat("mkdir ", to.string()));
  fs::permissions(to, fs::perms::owner_all, ec);
  absl::Status status = ChownToPostgres(to);
  if (!status.ok()) return status;
  for (auto it = fs::recursive_directory_iterator(
           from, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const fs::path relative = it->path().lexically_relative(from);
    const fs::path target = to / relative;
    std::error_code entry_ec;
    if (it->is_directory(entry_ec)) {
      fs::create_directory(target, entry_ec);
      fs::permissions(target, fs::perms::owner_all, entry_ec);
      status = ChownToPostgres(target);
      if (!status.ok()) return status;
      if (LeaveOutContents(relative.string())) it.disable_recursion_pending();
      continue;
    }
    if (LeaveOutFile(it->path().filename().string())) continue;
    if (it->is_symlink(entry_ec)) {
      return absl::UnimplementedError(
          absl::StrCat("copying a data directory with links (tablespaces?): ",
                       it->path().string()));
    }
    fs::copy_file(it->path(), target, entry_ec);
    if (entry_ec) {
      if (entry_ec == std::errc::no_such_file_or_directory) continue;
      return absl::InternalError(absl::StrCat("copying ", it->path().string(),
                                              ": ", entry_ec.message()));
    }
    fs::permissions(target, fs::perms::owner_read | fs::perms::owner_write,
                    entry_ec);
    status = ChownToPostgres(target);
    if (!status.ok()) return status;
  }
  if (ec) {
    return absl::InternalError(
        absl::StrCat("copying ", from.string(), ": ", ec.message()));
  }
  // pg_wal's subdirectories, empty: archive_status, and 17's summaries.
  for (const char* sub : {"archive_status", "summaries"}) {
    if (!fs::is_directory(from / "pg_wal" / sub, ec)) continue;
    fs::create_directories(to / "pg_wal" / sub, ec);
    fs::permissions(to / "pg_wal" / sub, fs::perms::owner_all, ec);
    status = ChownToPostgres((to / "pg_wal" / sub).string());
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status WriteFile(const std::string& path, const std::string& text,
                       bool append = false) {
  std::ofstream out(path, append ? std::ios::app : std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("writing ", path));
  return ChownToPostgres(path);
}

}  // namespace

int TestPgVersion() {
  std::string env = EnvOr("OUTBOXD_TEST_PG_VERSION", "15");
  int major = 0;
  if (!absl::SimpleAtoi(env, &major)) return 15;
  return major;
}

absl::StatusOr<std::string> PgBinDir(int major) {
  std::string bin_dir = EnvOr("OUTBOXD_PG_BINDIR", "");
  if (!bin_dir.empty()) return bin_dir;
  if (major == 15) return std::string("/usr/lib/postgresql/15/bin");
  const std::string cache = EnvOr(
      "OUTBOXD_PG_CACHE", absl::StrCat(OUTBOXD_SOURCE_DIR, "/.cache/postgres"));
  // Stamped folders cost the script a few milliseconds and no network.
  absl::Status status = RunChecked(
      {"env", absl::StrCat("PG_CACHE=", cache), "bash",
       absl::StrCat(OUTBOXD_SOURCE_DIR, "/scripts/fetch-postgres.sh"),
       absl::StrCat(major)},
      kFetchTimeout, "");
  if (!status.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no PostgreSQL ", major,
                     " (scripts/fetch-postgres.sh): ", status.message()));
  }
  return absl::StrCat(cache, "/", major, "/bin");
}

absl::StatusOr<int> FreeTcpPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("socket: ", std::strerror(errno)));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int err = errno;
    close(fd);
    return absl::InternalError(
        absl::StrCat("finding a free port: ", std::strerror(err)));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

// pg_ctl -D <dir>/data [-l log -o "<-c settings>"] <args...>.
std::vector<std::string> PgCluster::PgCtl(bool with_server_options,
                                          std::vector<std::string> args) const {
  std::vector<std::string> argv = AsPostgres(bin_dir_, "pg_ctl");
  argv.push_back("-D");
  argv.push_back(data_dir());
  if (with_server_options) {
    argv.push_back("-l");
    argv.push_back(log_file());
    std::vector<std::string> opts;
    for (const std::string& s : settings_) {
      opts.push_back(absl::StrCat("-c ", ShellQuote(s)));
    }
    opts.push_back(absl::StrCat("-c port=", port_));
    argv.push_back("-o");
    argv.push_back(absl::StrJoin(opts, " "));
  }
  for (std::string& a : args) argv.push_back(std::move(a));
  return argv;
}

// A temporary directory owned by postgres, the version's binaries and the
// settings; no data directory yet.
absl::Status PgCluster::Init(const PgClusterOptions& options) {
  options_ = options;
  if (options_.version == 0) options_.version = TestPgVersion();
  absl::StatusOr<std::string> bin_dir = PgBinDir(options_.version);
  if (!bin_dir.ok()) return bin_dir.status();
  bin_dir_ = *bin_dir;
  char dir_template[] = "/tmp/outboxd-pg-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  dir_ = dir_template;
  absl::Status status = ChownToPostgres(dir_);
  if (!status.ok()) return status;
  settings_ = {
      absl::StrCat("wal_level=", options_.wal_level),
      "listen_addresses=127.0.0.1",
      absl::StrCat("unix_socket_directories=", dir_),
      "fsync=off",
      "max_wal_senders=20",
      "max_replication_slots=20",
      "wal_sender_timeout=60s",
  };
  for (const std::string& s : options_.settings) settings_.push_back(s);
  return absl::OkStatus();
}

// A port found free may be taken before the server binds it: retry.
absl::Status PgCluster::StartOnFreePort() {
  absl::Status status;
  for (int attempt = 0; attempt < 5; ++attempt) {
    absl::StatusOr<int> port = FreeTcpPort();
    if (!port.ok()) return port.status();
    port_ = *port;
    status = StartAgain();
    if (status.ok()) return ReadVersion();
    if (!absl::StrContains(status.message(), "could not bind") &&
        !absl::StrContains(status.message(), "Address already in use")) {
      break;
    }
  }
  return status;
}

absl::Status PgCluster::ReadVersion() {
  absl::StatusOr<std::string> num =
      Query("postgres", "SHOW server_version_num");
  if (!num.ok()) return num.status();
  if (!absl::SimpleAtoi(*num, &version_num_)) {
    return absl::InternalError(
        absl::StrCat("server_version_num is not a number: ", *num));
  }
  if (major_version() != options_.version &&
      EnvOr("OUTBOXD_PG_BINDIR", "").empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("asked for PostgreSQL ", options_.version, ", ", bin_dir_,
                     " runs ", *num));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PgCluster>> PgCluster::Start(
    const PgClusterOptions& options) {
  std::unique_ptr<PgCluster> cluster(new PgCluster());
  absl::Status status = cluster->Init(options);
  if (!status.ok()) return status;

  std::vector<std::string> initdb = AsPostgres(cluster->bin_dir_, "initdb");
  initdb.push_back("-D");
  initdb.push_back(cluster->data_dir());
  for (const char* arg : {"-A", "trust", "-U", "postgres", "-E", "UTF8",
                          "--no-locale", "--no-sync", "--no-instructions"}) {
    initdb.push_back(arg);
  }
  status = RunChecked(initdb, kInitdbTimeout, "");
  if (!status.ok()) return status;
  status = cluster->StartOnFreePort();
  if (!status.ok()) return status;
  return cluster;
}

PgCluster::~PgCluster() {
  if (running_) {
    absl::StatusOr<CommandResult> result = RunCommand(
        PgCtl(false, {"-m", "immediate", "-w", "stop"}), kPgCtlTimeout);
    (void)result;
  }
  if (!dir_.empty()) {
    const char* keep = std::getenv("OUTBOXD_KEEP_PG");
    if (keep == nullptr || *keep == '\0') {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }
}

std::string PgCluster::ConnInfo(const std::string& dbname) const {
  return absl::StrCat("host=127.0.0.1 port=", port_,
                      " user=postgres dbname=", dbname);
}

absl::Status PgCluster::CreateDatabase(const std::string& name) {
  std::string quoted =
      absl::StrCat("\"", absl::StrReplaceAll(name, {{"\"", "\"\""}}), "\"");
  return Exec("postgres", absl::StrCat("CREATE DATABASE ", quoted));
}

absl::StatusOr<std::string> PgCluster::Query(const std::string& dbname,
                                             const std::string& sql) const {
  PgConn conn(PQconnectdb(ConnInfo(dbname).c_str()));
  if (conn == nullptr || PQstatus(conn.get()) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat(
        "connecting to test cluster: ",
        conn != nullptr ? PQerrorMessage(conn.get()) : "out of memory"));
  }
  absl::StatusOr<PgResult> result = Run(conn.get(), sql);
  if (!result.ok()) return result.status();
  if (PQresultStatus(result->get()) == PGRES_TUPLES_OK &&
      PQntuples(result->get()) > 0 && PQnfields(result->get()) > 0) {
    return std::string(PQgetvalue(result->get(), 0, 0));
  }
  return std::string();
}

absl::Status PgCluster::Exec(const std::string& dbname,
                             const std::string& sql) const {
  return Query(dbname, sql).status();
}

absl::Status PgCluster::Restart() {
  absl::Status status =
      RunChecked(PgCtl(true, {"-m", "fast", "-w", "-t", "60", "restart"}),
                 kPgCtlTimeout, log_file());
  running_ = status.ok();
  return status;
}

absl::Status PgCluster::Stop() {
  if (!running_) return absl::OkStatus();
  absl::Status status =
      RunChecked(PgCtl(false, {"-m", "fast", "-w", "-t", "60", "stop"}),
                 kPgCtlTimeout, log_file());
  if (status.ok()) running_ = false;
  return status;
}

absl::Status PgCluster::Crash() {
  if (!running_) return absl::OkStatus();
  absl::Status status =
      RunChecked(PgCtl(false, {"-m", "immediate", "-w", "-t", "60", "stop"}),
                 kPgCtlTimeout, log_file());
  if (status.ok()) running_ = false;
  return status;
}

absl::Status PgCluster::StartAgain() {
  if (running_) return absl::OkStatus();
  absl::Status status = RunChecked(PgCtl(true, {"-w", "-t", "60", "start"}),
                                   kPgCtlTimeout, log_file());
  running_ = status.ok();
  return status;
}

absl::Status PgCluster::Promote() {
  return RunChecked(PgCtl(false, {"-w", "-t", "60", "promote"}), kPgCtlTimeout,
                    log_file());
}

absl::StatusOr<bool> PgCluster::InRecovery() const {
  absl::StatusOr<std::string> in =
      Query("postgres", "SELECT pg_is_in_recovery()");
  if (!in.ok()) return in.status();
  return *in == "t";
}

absl::StatusOr<std::unique_ptr<PgCluster>> PgCluster::StartStandby(
    const StandbyOptions& options) {
  if (!running_) {
    return absl::FailedPreconditionError("a standby of a stopped cluster");
  }
  // The slot keeps the WAL from before the backup's start until the standby
  // has streamed it.
  absl::Status status = Exec(
      "postgres", absl::StrCat("SELECT pg_create_physical_replication_slot(",
                               SqlQuote(options.slot), ", true)"));
  if (!status.ok()) return status;

  std::unique_ptr<PgCluster> standby(new PgCluster());
  PgClusterOptions standby_options = options_;
  for (const std::string& s : options.settings) {
    standby_options.settings.push_back(s);
  }
  status = standby->Init(standby_options);
  if (!status.ok()) return status;

  // A non-exclusive backup: its session must stay open until the stop.
  PgConn backup(PQconnectdb(ConnInfo().c_str()));
  if (PQstatus(backup.get()) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat("connecting to test cluster: ",
                                               PQerrorMessage(backup.get())));
  }
  absl::StatusOr<PgResult> started =
      Run(backup.get(), "SELECT pg_backup_start('outboxd-test-standby', true)");
  if (!started.ok()) return started.status();
  status = CopyDataDirectory(data_dir(), standby->data_dir());
  absl::StatusOr<PgResult> stopped = Run(
      backup.get(), "SELECT labelfile, spcmapfile FROM pg_backup_stop(true)");
  if (!status.ok()) return status;
  if (!stopped.ok()) return stopped.status();
  backup.reset();
  if (PQntuples(stopped->get()) != 1) {
    return absl::InternalError("pg_backup_stop returned no row");
  }
  status = WriteFile(standby->data_dir() + "/backup_label",
                     PQgetvalue(stopped->get(), 0, 0));
  if (!status.ok()) return status;
  std::string spcmap = PQgetvalue(stopped->get(), 0, 1);
  if (!spcmap.empty()) {
    status = WriteFile(standby->data_dir() + "/tablespace_map", spcmap);
    if (!status.ok()) return status;
  }

  status = WriteFile(standby->data_dir() + "/standby.signal", "");
  if (!status.ok()) return status;
  // In postgresql.auto.conf, where pg_basebackup -R writes them.
  status = WriteFile(
      standby->data_dir() + "/postgresql.auto.conf",
      absl::StrCat(
          "primary_conninfo = ",
          SqlQuote(absl::StrCat(ConnInfo("postgres"),
                                " application_name=", options.slot)),
          "\nprimary_slot_name = ", SqlQuote(options.slot),
          "\nhot_standby = on\nhot_standby_feedback = on\n"
          // Feedback (and replay positions) each second, not each 10 s.
          "wal_receiver_status_interval = 1s\n"),
      /*append=*/true);
  if (!status.ok()) return status;
  status = standby->StartOnFreePort();
  if (!status.ok()) return status;
  status = WaitForReplay(*standby);
  if (!status.ok()) return status;
  return standby;
}

absl::Status PgCluster::WaitForReplay(const PgCluster& standby,
                                      absl::Duration timeout) const {
  absl::StatusOr<std::string> lsn =
      Query("postgres", "SELECT pg_current_wal_lsn()");
  if (!lsn.ok()) return lsn.status();
  const std::string sql = absl::StrCat(
      "SELECT pg_last_wal_replay_lsn() >= ", SqlQuote(*lsn), "::pg_lsn");
  absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<std::string> replayed;
  while (absl::Now() < deadline) {
    replayed = standby.Query("postgres", sql);
    if (replayed.ok() && *replayed == "t") return absl::OkStatus();
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "the standby did not replay up to ", *lsn, " in ",
      absl::FormatDuration(timeout), " (last answer: ",
      replayed.ok() ? *replayed : replayed.status().ToString(),
      "); standby log tail:\n", ReadFileTail(standby.log_file(), 3000)));
}

std::string MultiHostConnInfo(const std::vector<const PgCluster*>& clusters,
                              const std::string& dbname) {
  std::vector<std::string> hosts;
  std::vector<std::string> ports;
  for (const PgCluster* cluster : clusters) {
    hosts.push_back("127.0.0.1");
    ports.push_back(absl::StrCat(cluster->port()));
  }
  return absl::StrCat(
      "host=", absl::StrJoin(hosts, ","), " port=", absl::StrJoin(ports, ","),
      " user=postgres dbname=", dbname, " target_session_attrs=read-write");
}

std::vector<Row> QueryRows(const std::string& conninfo,
                           const std::string& sql) {
  std::vector<Row> rows;
  PgConn conn(PQconnectdb(conninfo.c_str()));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    ADD_FAILURE() << "connecting: " << PQerrorMessage(conn.get());
    return rows;
  }
  PgResult res(PQexec(conn.get(), sql.c_str()));
  if (PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
    ADD_FAILURE() << sql << ": " << PQerrorMessage(conn.get());
    return rows;
  }
  for (int r = 0; r < PQntuples(res.get()); ++r) {
    Row row;
    for (int c = 0; c < PQnfields(res.get()); ++c) {
      if (PQgetisnull(res.get(), r, c)) {
        row.emplace_back();
      } else {
        row.emplace_back(std::string(PQgetvalue(res.get(), r, c),
                                     PQgetlength(res.get(), r, c)));
      }
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace outboxd::testing
