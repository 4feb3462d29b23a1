#include "pipeline/reconnect_backoff.h"

#include <algorithm>

namespace outboxd {

absl::Duration ReconnectBackoff::Next() {
  absl::Duration ceiling = std::min(ceiling_, options_.max_backoff);
  ceiling = std::max(ceiling, absl::Milliseconds(1));
  const double us = absl::ToDoubleMicroseconds(ceiling);
  std::uniform_real_distribution<double> jitter(us / 2, us);
  ceiling_ = std::min(ceiling * 2, options_.max_backoff);
  return absl::Microseconds(static_cast<int64_t>(jitter(rng_)));
}

}  // namespace outboxd
