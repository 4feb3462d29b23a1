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
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/harness/child_process.h"

namespace outboxd::testing {
namespace {

constexpr absl::Duration kInitdbTimeout = absl::Seconds(120);
constexpr absl::Duration kPgCtlTimeout = absl::Seconds(90);

std::string BinDir() {
  const char* env = std::getenv("OUTBOXD_PG_BINDIR");
  if (env != nullptr && *env != '\0') return env;
  return "/usr/lib/postgresql/15/bin";
}

bool RunningAsRoot() { return geteuid() == 0; }

// The command prefix that runs a PostgreSQL tool as `postgres` when we are
// root (the server refuses to run as root).
std::vector<std::string> AsPostgres(const std::string& tool) {
  std::vector<std::string> argv;
  if (RunningAsRoot()) argv = {"runuser", "-u", "postgres", "--"};
  argv.push_back(absl::StrCat(BinDir(), "/", tool));
  return argv;
}

// Single-quotes `word` for /bin/sh: pg_ctl hands -o to the shell.
std::string ShellQuote(const std::string& word) {
  return absl::StrCat("'", absl::StrReplaceAll(word, {{"'", "'\\''"}}), "'");
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

// pg_ctl -D <dir>/data [-l log -o "<-c settings>"] <args...>.
std::vector<std::string> PgCtl(const std::string& dir, bool with_server_options,
                               const std::vector<std::string>& settings,
                               int port, std::vector<std::string> args) {
  std::vector<std::string> argv = AsPostgres("pg_ctl");
  argv.push_back("-D");
  argv.push_back(dir + "/data");
  if (with_server_options) {
    argv.push_back("-l");
    argv.push_back(dir + "/postgres.log");
    std::vector<std::string> opts;
    for (const std::string& s : settings) {
      opts.push_back(absl::StrCat("-c ", ShellQuote(s)));
    }
    opts.push_back(absl::StrCat("-c port=", port));
    argv.push_back("-o");
    argv.push_back(absl::StrJoin(opts, " "));
  }
  for (std::string& a : args) argv.push_back(std::move(a));
  return argv;
}

// A short-lived libpq connection for harness queries.
struct PgConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct PgResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};

}  // namespace

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

absl::StatusOr<std::unique_ptr<PgCluster>> PgCluster::Start(
    const PgClusterOptions& options) {
  std::unique_ptr<PgCluster> cluster(new PgCluster());
  char dir_template[] = "/tmp/outboxd-pg-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  cluster->dir_ = dir_template;
  if (RunningAsRoot()) {
    passwd* pw = getpwnam("postgres");
    if (pw == nullptr) {
      return absl::FailedPreconditionError(
          "running as root but there is no 'postgres' user to run the "
          "server as");
    }
    if (chown(cluster->dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      return absl::InternalError(
          absl::StrCat("chown ", cluster->dir_, ": ", std::strerror(errno)));
    }
  }

  std::vector<std::string> initdb = AsPostgres("initdb");
  initdb.push_back("-D");
  initdb.push_back(cluster->dir_ + "/data");
  for (const char* arg : {"-A", "trust", "-U", "postgres", "-E", "UTF8",
                          "--no-locale", "--no-sync", "--no-instructions"}) {
    initdb.push_back(arg);
  }
  absl::Status status = RunChecked(initdb, kInitdbTimeout, "");
  if (!status.ok()) return status;

  cluster->settings_ = {
      absl::StrCat("wal_level=", options.wal_level),
      "listen_addresses=127.0.0.1",
      absl::StrCat("unix_socket_directories=", cluster->dir_),
      "fsync=off",
      "max_wal_senders=20",
      "max_replication_slots=20",
      "wal_sender_timeout=60s",
  };
  for (const std::string& s : options.settings) {
    cluster->settings_.push_back(s);
  }

  // A port found free may be taken before the server binds it: retry.
  for (int attempt = 0; attempt < 5; ++attempt) {
    absl::StatusOr<int> port = FreeTcpPort();
    if (!port.ok()) return port.status();
    cluster->port_ = *port;
    status = cluster->StartAgain();
    if (status.ok()) return cluster;
    if (!absl::StrContains(status.message(), "could not bind") &&
        !absl::StrContains(status.message(), "Address already in use")) {
      break;
    }
  }
  return status;
}

PgCluster::~PgCluster() {
  if (running_) {
    absl::StatusOr<CommandResult> result = RunCommand(
        PgCtl(dir_, false, settings_, port_, {"-m", "immediate", "-w", "stop"}),
        kPgCtlTimeout);
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
  std::unique_ptr<PGconn, PgConnDeleter> conn(
      PQconnectdb(ConnInfo(dbname).c_str()));
  if (conn == nullptr || PQstatus(conn.get()) != CONNECTION_OK) {
    return absl::UnavailableError(absl::StrCat(
        "connecting to test cluster: ",
        conn != nullptr ? PQerrorMessage(conn.get()) : "out of memory"));
  }
  std::unique_ptr<PGresult, PgResultDeleter> result(
      PQexec(conn.get(), sql.c_str()));
  ExecStatusType st =
      result != nullptr ? PQresultStatus(result.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    return absl::InternalError(absl::StrCat(
        "test cluster query failed: ", sql, ": ",
        absl::StripTrailingAsciiWhitespace(PQerrorMessage(conn.get()))));
  }
  if (st == PGRES_TUPLES_OK && PQntuples(result.get()) > 0 &&
      PQnfields(result.get()) > 0) {
    return std::string(PQgetvalue(result.get(), 0, 0));
  }
  return std::string();
}

absl::Status PgCluster::Exec(const std::string& dbname,
                             const std::string& sql) const {
  return Query(dbname, sql).status();
}

absl::Status PgCluster::Restart() {
  absl::Status status =
      RunChecked(PgCtl(dir_, true, settings_, port_,
                       {"-m", "fast", "-w", "-t", "60", "restart"}),
                 kPgCtlTimeout, dir_ + "/postgres.log");
  running_ = status.ok();
  return status;
}

absl::Status PgCluster::Stop() {
  if (!running_) return absl::OkStatus();
  absl::Status status =
      RunChecked(PgCtl(dir_, false, settings_, port_,
                       {"-m", "fast", "-w", "-t", "60", "stop"}),
                 kPgCtlTimeout, dir_ + "/postgres.log");
  if (status.ok()) running_ = false;
  return status;
}

absl::Status PgCluster::StartAgain() {
  if (running_) return absl::OkStatus();
  absl::Status status = RunChecked(
      PgCtl(dir_, true, settings_, port_, {"-w", "-t", "60", "start"}),
      kPgCtlTimeout, dir_ + "/postgres.log");
  running_ = status.ok();
  return status;
}

std::vector<Row> QueryRows(const std::string& conninfo,
                           const std::string& sql) {
  std::vector<Row> rows;
  std::unique_ptr<PGconn, PgConnDeleter> conn(PQconnectdb(conninfo.c_str()));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    ADD_FAILURE() << "connecting: " << PQerrorMessage(conn.get());
    return rows;
  }
  std::unique_ptr<PGresult, PgResultDeleter> res(
      PQexec(conn.get(), sql.c_str()));
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
