// ReconnectBackoff: capped, jittered exponential backoff between attempts to
// reach PostgreSQL again (connection lost, server restarting, slot active in
// another outboxd). Each delay is drawn uniformly from [d/2, d] where d
// doubles from `initial` up to `max` ("equal jitter"), so that several
// standbys do not retry in lockstep.
//
// Not thread-safe; a plain value owned by the pipeline.
#ifndef OUTBOXD_PIPELINE_RECONNECT_BACKOFF_H_
#define OUTBOXD_PIPELINE_RECONNECT_BACKOFF_H_

#include <cstdint>
#include <random>

#include "absl/time/time.h"

namespace outboxd {

struct ReconnectOptions {
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(5);
  // Give up (exit 1) after being unable to stream for this long; zero or
  // infinite = never give up.
  absl::Duration give_up_after = absl::ZeroDuration();
};

class ReconnectBackoff {
 public:
  explicit ReconnectBackoff(const ReconnectOptions& options,
                            uint64_t seed = std::random_device{}())
      : options_(options), rng_(seed) {
    Reset();
  }

  // The delay before the next attempt; doubles the ceiling for the one after.
  absl::Duration Next();
  // After a successful connection: start again from `initial_backoff`.
  void Reset() { ceiling_ = options_.initial_backoff; }

 private:
  ReconnectOptions options_;
  std::mt19937_64 rng_;
  absl::Duration ceiling_;
};

}  // namespace outboxd

#endif  // OUTBOXD_PIPELINE_RECONNECT_BACKOFF_H_
