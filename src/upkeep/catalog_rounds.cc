#include "upkeep/catalog_rounds.h"

#include <utility>

#include "common/logging.h"
#include "common/status_macros.h"

namespace outboxd {

std::unique_ptr<CatalogRounds> CatalogRounds::Start(
    CatalogRoundsOptions options, Round round) {
  std::unique_ptr<CatalogRounds> rounds(
      new CatalogRounds(std::move(options), std::move(round)));
  CatalogRounds* raw = rounds.get();
  rounds->thread_ = std::thread([raw] { raw->Run(); });
  return rounds;
}

CatalogRounds::~CatalogRounds() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void CatalogRounds::Run() {
  std::unique_ptr<PgConnection> conn;
  std::string failing;  // the cause logged last, until a round works
  do {
    absl::Status s = [&]() -> absl::Status {
      if (conn == nullptr) {
        ASSIGN_OR_RETURN(conn,
                         PgConnection::Connect(options_.conninfo,
                                               PgConnection::Mode::kNormal));
      }
      return round_(*conn);
    }();
    if (!s.ok()) {
      conn.reset();
      if (std::string cause(s.message()); cause != failing) {
        spdlog::warn("{}: {}; retrying every {}", options_.failing, cause,
                     absl::FormatDuration(options_.interval));
        failing = std::move(cause);
      }
    } else if (!failing.empty()) {
      spdlog::info("{}", options_.working_again);
      failing.clear();
    }
    ++rounds_;
  } while (!stop_.WaitForNotificationWithTimeout(options_.interval));
}

}  // namespace outboxd
