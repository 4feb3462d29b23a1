#include "pipeline/poll_pipeline.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kafka/topic_catalog.h"
#include "pipeline/ack_tracker.h"
#include "pipeline/reconnect_backoff.h"
#include "pipeline/reserved_header_log.h"

namespace outboxd {
namespace {

constexpr absl::Duration kProgressLogInterval = absl::Seconds(10);
// How long one wait for delivery reports blocks.
constexpr absl::Duration kAckPollInterval = absl::Milliseconds(5);
// How long one metadata lookup of a topic may block.
constexpr absl::Duration kTopicLookupTimeout = absl::Seconds(3);

// A row that cannot be an event, for the dead-letter topic.
KafkaRecord DeadLetterRecord(const PolledRow& row, const std::string& topic) {
  const InvalidEvent& bad = std::get<InvalidEvent>(row.event);
  KafkaRecord r;
  r.topic = topic;
  r.key = bad.aggregate_id;
  r.value = absl::string_view(bad.content);
  r.headers = {
      {"outbox.error", bad.reason},
      {std::string(kHeaderSeq), absl::StrCat(row.seq)},
  };
  return r;
}

class PollPipeline {
 public:
  PollPipeline(const PollPipelineOptions& options, PipelineStats* stats)
      : options_(options),
        stats_(stats),
        reserved_header_log_(options.metrics) {}

  absl::Status Run(const std::atomic<bool>& stop) {
    ProducerOptions producer_options = options_.producer;
    if (metrics::OutboxdMetrics* m = options_.metrics) {
      producer_options.on_brokers_up = [m](int up) {
        m->kafka_brokers_up->Set(up);
      };
    }
    ASSIGN_OR_RETURN(
        producer_,
        KafkaProducer::Create(producer_options,
                              [this](uint64_t sequence, absl::Status status) {
                                OnDelivery(sequence, std::move(status));
                              }));
    catalog_ = std::make_unique<TopicCatalog>(
        [producer = producer_.get()](const std::string& topic) {
          return producer->LookupTopic(topic, kTopicLookupTimeout);
        });
    absl::Status s = ConnectWithRetry(stop);
    while (s.ok() && poller_ != nullptr) {
      if (options_.metrics != nullptr) options_.metrics->streaming->Set(1);
      s = Loop(stop);  // OK only when stopped
      if (options_.metrics != nullptr) options_.metrics->streaming->Set(0);
      if (s.ok() || !Reconnectable(s)) break;
      // The open batch's transaction died with the connection: its rows
      // stay unpublished and are fetched and sent again (at-least-once);
      // their reports still arrive and confirm nothing more.
      spdlog::warn(
          "{}; reconnecting (the open batch is rolled back, its rows "
          "stay unpublished and are sent again)",
          std::string(s.message()));
      if (options_.metrics != nullptr) {
        options_.metrics->reconnects->Increment();
      }
      poller_.reset();
      tracker_.AbandonOpenTransaction();
      s = ConnectWithRetry(stop);
    }
    if (!s.ok() && poller_ != nullptr) poller_->AbortBatch().IgnoreError();
    LogProgress();
    return s;
  }

 private:
  void OnDelivery(uint64_t sequence, absl::Status status) {
    if (status.ok()) {
      tracker_.Acknowledge(sequence);
      ++stats_->events_acknowledged;
    } else {
      if (options_.metrics != nullptr) {
        options_.metrics->delivery_errors->Increment();
      }
      spdlog::error("delivery of row #{} of batch {} failed: {}", sequence,
                    batch_number_, status.ToString());
      tracker_.Fail(sequence, std::move(status));
    }
  }

  // A lost connection or a restarting server; not a broken producer or a
  // failed delivery.
  bool Reconnectable(const absl::Status& s) const {
    return absl::IsUnavailable(s) && tracker_.failure().ok() &&
           producer_->fatal_error().ok();
  }

  // Connects the poller until it succeeds, with the backoff and give-up of
  // --reconnect-* while the cause is kUnavailable (as the CDC pipeline).
  // OK with poller_ == nullptr when stopped meanwhile.
  absl::Status ConnectWithRetry(const std::atomic<bool>& stop) {
    ReconnectBackoff backoff(options_.reconnect);
    const absl::Time since = absl::Now();
    std::string last_cause;
    for (int attempt = 1;; ++attempt) {
      absl::StatusOr<std::unique_ptr<OutboxPoller>> poller =
          OutboxPoller::Connect(options_.poller);
      if (poller.ok()) {
        poller_ = *std::move(poller);
        if (attempt > 1) {
          spdlog::info("connected after {} attempts in {}", attempt,
                       absl::FormatDuration(absl::Now() - since));
        }
        spdlog::info(
            "publishing from {} (source {}, batch size {}, cleanup {}, "
            "interval {})",
            options_.poller.table.ToString(),
            options_.poller.notify_channel.empty() ? "poll" : "notify",
            options_.poller.batch_size,
            options_.poller.cleanup == PollCleanup::kMark ? "mark" : "delete",
            absl::FormatDuration(options_.poll_interval));
        return absl::OkStatus();
      }
      const absl::Status& s = poller.status();
      if (!Reconnectable(s)) return s;
      const absl::Duration give_up = options_.reconnect.give_up_after;
      if (give_up > absl::ZeroDuration() && absl::Now() - since > give_up) {
        return absl::UnavailableError(
            absl::StrCat(s.message(), " (gave up after ",
                         absl::FormatDuration(give_up), ")"));
      }
      absl::Duration delay = backoff.Next();
      std::string cause(s.message());
      if (cause != last_cause) {
        spdlog::info("cannot poll yet: {}; retrying with backoff up to {}",
                     cause,
                     absl::FormatDuration(options_.reconnect.max_backoff));
        last_cause = cause;
      } else {
        spdlog::debug("attempt {}: {}; next in {}", attempt, cause,
                      absl::FormatDuration(delay));
      }
      const absl::Time until = absl::Now() + delay;
      while (absl::Now() < until) {
        if (stop.load(std::memory_order_relaxed)) return absl::OkStatus();
        // Deliveries of the lost batch go on meanwhile.
        producer_->Poll(std::min(until - absl::Now(), absl::Milliseconds(50)));
        RETURN_IF_ERROR(producer_->fatal_error());
        RETURN_IF_ERROR(tracker_.failure());
      }
    }
  }

  absl::Status Loop(const std::atomic<bool>& stop) {
    absl::Time next_progress = absl::Now() + kProgressLogInterval;
    while (!stop.load(std::memory_order_relaxed)) {
      producer_->Poll(absl::ZeroDuration());
      RETURN_IF_ERROR(producer_->fatal_error());
      ASSIGN_OR_RETURN(bool full, PublishOneBatch(stop));
      if (absl::Now() >= next_progress) {
        LogProgress();
        next_progress = absl::Now() + kProgressLogInterval;
      }
      if (full) continue;  // more is waiting: no sleep
      ASSIGN_OR_RETURN(
          bool notified,
          poller_->WaitForWork(absl::Now() + options_.poll_interval, stop));
      if (notified) ++notifications_;
    }
    spdlog::info("stop requested");
    return absl::OkStatus();
  }

  // One batch: fetch, produce, wait for every acknowledgement, then mark and
  // commit; anything else rolls back. Returns whether the batch was full.
  absl::StatusOr<bool> PublishOneBatch(const std::atomic<bool>& stop) {
    ASSIGN_OR_RETURN(PolledBatch batch, poller_->FetchBatch());
    if (options_.metrics != nullptr) {
      options_.metrics->source_queries
          ->Labels({options_.poller.notify_channel.empty() ? "poll" : "notify"})
          .Increment();
    }
    if (batch.rows.empty()) {
      RETURN_IF_ERROR(poller_->AbortBatch());
      // Everything was held back: let the blocking batch finish first.
      return false;
    }
    ++batch_number_;
    spdlog::debug("batch {}: {} rows in flight ({} held back)", batch_number_,
                  batch.rows.size(), batch.held_back);
    tracker_.BeginTransaction();
    std::vector<int64_t> seqs;
    seqs.reserve(batch.rows.size());
    for (const PolledRow& row : batch.rows) {
      if (const auto* event = std::get_if<OutboxEvent>(&row.event)) {
        reserved_header_log_.Note(*event, absl::StrCat("row seq ", row.seq));
      }
      RETURN_IF_ERROR(Produce(row, tracker_.AddEvent()));
      seqs.push_back(row.seq);
    }
    const Lsn batch_position(batch_number_);
    tracker_.CommitTransaction(batch_position);

    // Wait for the acknowledgements. On stop, wait at most shutdown_timeout.
    std::optional<absl::Time> stop_deadline;
    while (tracker_.ConfirmableLsn() < batch_position) {
      producer_->Poll(kAckPollInterval);
      if (!tracker_.failure().ok() || !producer_->fatal_error().ok()) {
        absl::Status cause = !tracker_.failure().ok()
                                 ? tracker_.failure()
                                 : producer_->fatal_error();
        poller_->AbortBatch().IgnoreError();
        return absl::Status(
            cause.code(), absl::StrCat("batch of ", seqs.size(),
                                       " rows rolled back, left unpublished: ",
                                       cause.message()));
      }
      if (stop.load(std::memory_order_relaxed)) {
        if (!stop_deadline) {
          stop_deadline = absl::Now() + options_.shutdown_timeout;
        }
        if (absl::Now() >= *stop_deadline) {
          spdlog::warn(
              "batch of {} rows not acknowledged at stop ({} in flight): "
              "rolled back, the rows stay unpublished and will be published "
              "again",
              seqs.size(), tracker_.EventsInFlight());
          RETURN_IF_ERROR(poller_->AbortBatch());
          return false;
        }
      }
    }
    RETURN_IF_ERROR(poller_->CompleteBatch(seqs));
    rows_completed_ += seqs.size();
    return batch.full;
  }

  // Produces one row, waiting while librdkafka's queue is full.
  absl::Status Produce(const PolledRow& row, uint64_t sequence) {
    while (true) {
      absl::Status s;
      const auto* event = std::get_if<OutboxEvent>(&row.event);
      if (event != nullptr) {
        KafkaRecord record = Route(*event, options_.router);
        s = CheckTopic(record.topic);
        if (absl::IsUnavailable(s)) {
          producer_->Poll(absl::Milliseconds(50));  // cannot tell yet: wait
          RETURN_IF_ERROR(producer_->fatal_error());
          continue;
        }
        if (!s.ok()) {
          // The topic cannot take it: an invalid row (--on-invalid).
          if (options_.on_invalid == InvalidEventPolicy::kFail) {
            return absl::InvalidArgumentError(
                absl::StrCat("row seq ", row.seq, " cannot be routed to ",
                             record.topic, ": ", s.message(),
                             " (--on-invalid=fail; it stays "
                             "unpublished)"));
          }
          InvalidEvent invalid;
          invalid.aggregate_id = event->aggregate_id;
          invalid.reason =
              absl::StrCat("cannot route to ", record.topic, ": ", s.message());
          invalid.content = EventAsJson(*event);
          return ProduceDeadLetter(PolledRow{row.seq, std::move(invalid)},
                                   sequence);
        }
        s = producer_->Produce(record, sequence);
        if (!s.ok() && !absl::IsResourceExhausted(s)) {
          // Not producible as it is (e.g. too large): dead-letter it.
          if (options_.on_invalid == InvalidEventPolicy::kFail) {
            return absl::InvalidArgumentError(absl::StrCat(
                "row seq ", row.seq, " cannot be produced: ", s.message(),
                " (--on-invalid=fail; it stays unpublished)"));
          }
          InvalidEvent invalid;
          invalid.aggregate_id = event->aggregate_id;
          invalid.reason = absl::StrCat("cannot produce: ", s.message());
          invalid.content =
              absl::StrCat("{\"id\":\"", event->id, "\",\"payload_bytes\":",
                           event->payload ? event->payload->size() : 0, "}");
          return ProduceDeadLetter(PolledRow{row.seq, std::move(invalid)},
                                   sequence);
        }
      } else {
        return ProduceDeadLetter(row, sequence);
      }
      if (s.ok()) {
        ++stats_->events_produced;
        return absl::OkStatus();
      }
      producer_->Poll(absl::Milliseconds(10));  // backpressure
      RETURN_IF_ERROR(producer_->fatal_error());
    }
  }

  absl::Status ProduceDeadLetter(const PolledRow& row, uint64_t sequence) {
    const std::string& reason = std::get<InvalidEvent>(row.event).reason;
    spdlog::warn("invalid row seq {}: {}", row.seq, reason);
    if (options_.on_invalid == InvalidEventPolicy::kFail) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid row seq ", row.seq, ": ", reason,
                       " (--on-invalid=fail; it stays unpublished)"));
    }
    while (true) {
      absl::Status topic = CheckTopic(options_.dlq_topic);
      if (absl::IsUnavailable(topic)) {
        producer_->Poll(absl::Milliseconds(50));
        RETURN_IF_ERROR(producer_->fatal_error());
        continue;
      }
      if (!topic.ok()) {
        // Never dropped: the row stays unpublished.
        return absl::FailedPreconditionError(
            absl::StrCat("cannot dead-letter row seq ", row.seq, " (", reason,
                         "): dead-letter topic: ", topic.message(),
                         "; it stays unpublished"));
      }
      absl::Status s = producer_->Produce(
          DeadLetterRecord(row, options_.dlq_topic), sequence);
      if (s.ok()) {
        ++stats_->events_dead_lettered;
        return absl::OkStatus();
      }
      if (!absl::IsResourceExhausted(s)) {
        return absl::Status(
            s.code(), absl::StrCat("dead-lettering to ", options_.dlq_topic,
                                   " failed: ", s.message()));
      }
      producer_->Poll(absl::Milliseconds(10));
      RETURN_IF_ERROR(producer_->fatal_error());
    }
  }

  // The catalog's answer for `topic`; kUnavailable (cannot tell yet) is
  // logged once per distinct cause.
  absl::Status CheckTopic(const std::string& topic) {
    absl::Status s = catalog_->Check(topic);
    if (absl::IsUnavailable(s)) {
      if (s.message() != last_topic_wait_) {
        spdlog::warn("{}; the row waits", std::string(s.message()));
        last_topic_wait_ = std::string(s.message());
      }
    } else {
      last_topic_wait_.clear();
    }
    return s;
  }

  void LogProgress() {
    spdlog::info(
        "events produced {} acknowledged {} dead-lettered {}, rows completed "
        "{}, "
        "batches {}, notifications {}",
        stats_->events_produced, stats_->events_acknowledged,
        stats_->events_dead_lettered, rows_completed_, batch_number_,
        notifications_);
  }

  const PollPipelineOptions& options_;
  PipelineStats* stats_;
  AckTracker tracker_;
  // After the tracker: destroyed first, so no report reaches a dead tracker.
  std::unique_ptr<KafkaProducer> producer_;
  // Asks producer_ whether a topic can take records (names, existence).
  std::unique_ptr<TopicCatalog> catalog_;
  std::string last_topic_wait_;
  std::unique_ptr<OutboxPoller> poller_;
  uint64_t batch_number_ = 0;
  uint64_t notifications_ = 0;
  uint64_t rows_completed_ = 0;  // marked or deleted
  ReservedHeaderLog reserved_header_log_;
};

}  // namespace

absl::Status RunPollPipeline(const PollPipelineOptions& options,
                             const std::atomic<bool>& stop,
                             PipelineStats* stats) {
  PipelineStats local;
  PollPipeline pipeline(options, stats != nullptr ? stats : &local);
  return pipeline.Run(stop);
}

}  // namespace outboxd
