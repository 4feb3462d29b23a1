#include "pipeline/cdc_pipeline.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>
#include <variant>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "pg/connection.h"
#include "pg/pgoutput.h"
#include "pg/replication_stream.h"
#include "pipeline/ack_tracker.h"

namespace outboxd {
namespace {

constexpr absl::Duration kProgressLogInterval = absl::Seconds(10);
// How long a read waits while acknowledgements are outstanding, so that
// delivery reports are served promptly.
constexpr absl::Duration kBusyPollInterval = absl::Milliseconds(5);

// The record that carries an invalid event to the dead-letter topic: the
// original content as the value, the reason and position as headers.
KafkaRecord DeadLetterRecord(const InvalidEvent& bad,
                             const std::string& topic) {
  KafkaRecord r;
  r.topic = topic;
  r.key = bad.aggregate_id;
  r.value = absl::string_view(bad.content);
  r.timestamp_ms = bad.commit_time_unix_ms;
  r.headers = {
      {"outbox.error", bad.reason},
      {std::string(kHeaderLsn), absl::StrCat(bad.position.commit_lsn.value())},
      {std::string(kHeaderIndex), absl::StrCat(bad.position.index)},
  };
  return r;
}

// An event that could not be produced as it is (e.g. larger than
// message.max.bytes) becomes an invalid event without its payload.
InvalidEvent Unproducible(const OutboxEvent& e, const absl::Status& cause) {
  InvalidEvent bad;
  bad.position = e.position;
  bad.commit_time_unix_ms = e.commit_time_unix_ms;
  bad.reason = absl::StrCat("cannot produce: ", cause.message());
  bad.aggregate_id = e.aggregate_id;
  nlohmann::ordered_json c = {
      {"id", e.id},
      {"aggregatetype", e.aggregate_type},
      {"aggregateid", e.aggregate_id},
      {"type", e.type},
      {"payload_bytes", e.payload ? e.payload->size() : 0},
  };
  bad.content =
      c.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return bad;
}

class CdcPipeline {
 public:
  CdcPipeline(const CdcPipelineOptions& options, PipelineStats* stats)
      : options_(options),
        stats_(stats),
        mapper_(options.mapper),
        router_(options.router) {}

  absl::Status Run(const std::atomic<bool>& stop) {
    RETURN_IF_ERROR(Setup());
    absl::Status s = Stream(stop);
    absl::Status end = Finish(s.ok());
    return s.ok() ? end : s;
  }

 private:
  // What waits to be produced while the queue is full.
  struct Pending {
    std::variant<OutboxEvent, InvalidEvent> item;
    uint64_t sequence;
  };

  absl::Status Setup() {
    ASSIGN_OR_RETURN(
        auto conn,
        PgConnection::Connect(options_.conninfo, PgConnection::Mode::kNormal));
    RETURN_IF_ERROR(CheckWalLevel(*conn));
    RETURN_IF_ERROR(EnsurePublication(*conn, options_.setup));
    ASSIGN_OR_RETURN(SlotState slot, EnsureSlot(*conn, options_.setup));
    spdlog::info("slot {} {}, confirmed position {}", options_.setup.slot,
                 slot.created ? "created" : "found",
                 slot.confirmed_flush.ToString());
    tracker_ = AckTracker(slot.confirmed_flush);
    // outbox.source: fetched once; the stream's identity does not change.
    ASSIGN_OR_RETURN(router_.source, SourceIdentity(*conn, options_.setup.slot));
    spdlog::info("source {}", router_.source);
    reported_ = slot.confirmed_flush;

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
    ReplicationStreamOptions so;
    so.conninfo = options_.conninfo;
    so.slot = options_.setup.slot;
    so.publication = options_.setup.publication;
    ASSIGN_OR_RETURN(stream_, ReplicationStream::Start(so));
    spdlog::info("streaming from slot {} (publication {})", so.slot,
                 so.publication);
    if (options_.metrics != nullptr) options_.metrics->streaming->Set(1);
    return absl::OkStatus();
  }

  void OnDelivery(uint64_t sequence, absl::Status status) {
    ObserveDelivery(sequence, status);
    if (status.ok()) {
      tracker_.Acknowledge(sequence);
      ++stats_->events_acknowledged;
    } else {
      spdlog::error("delivery of event #{} failed: {}", sequence,
                    status.ToString());
      tracker_.Fail(sequence, std::move(status));
    }
  }

  absl::Status Stream(const std::atomic<bool>& stop) {
    absl::Time next_progress = absl::Now() + kProgressLogInterval;
    while (!stop.load(std::memory_order_relaxed)) {
      producer_->Poll(absl::ZeroDuration());
      RETURN_IF_ERROR(producer_->fatal_error());
      RETURN_IF_ERROR(tracker_.failure());
      RETURN_IF_ERROR(SendStatusIfDue(/*force=*/false));

      absl::Time now = absl::Now();
      if (now >= next_progress) {
        LogProgress();
        next_progress = now + kProgressLogInterval;
      }

      absl::Duration until_status =
          std::max(next_status_ - now, absl::ZeroDuration());
      if (pending_.has_value()) {
        // Backpressure: do not read the socket until the queue has room.
        RETURN_IF_ERROR(TryProducePending());
        if (pending_.has_value()) {
          producer_->Poll(std::min(until_status, absl::Milliseconds(50)));
        }
        continue;
      }

      absl::Duration wait = until_status;
      if (tracker_.EventsInFlight() > 0) {
        wait = std::min(wait, kBusyPollInterval);
      }
      ASSIGN_OR_RETURN(auto message, stream_->Read(wait));
      if (message.has_value()) RETURN_IF_ERROR(OnCopyMessage(*message));
    }
    spdlog::info("stop requested");
    return absl::OkStatus();
  }

  absl::Status OnCopyMessage(const ServerCopyMessage& message) {
    if (const auto* keepalive = std::get_if<PrimaryKeepalive>(&message)) {
      received_ = Lsn::Max(received_, keepalive->wal_end);
      tracker_.ObserveServerWalEnd(keepalive->wal_end);
      if (keepalive->reply_requested) {
        return SendStatusIfDue(/*force=*/true);
      }
      return absl::OkStatus();
    }
    const auto& data = std::get<XLogData>(message);
    received_ = Lsn::Max(received_, data.wal_end);
    ASSIGN_OR_RETURN(pgoutput::PgOutputMessage decoded,
                     pgoutput::Decode(data.data));
    ASSIGN_OR_RETURN(MappedMessage mapped, mapper_.Apply(decoded));
    if (std::holds_alternative<TransactionBegin>(mapped)) {
      tracker_.BeginTransaction();
    } else if (auto* event = std::get_if<OutboxEvent>(&mapped)) {
      RETURN_IF_ERROR(Publish(std::move(*event)));
    } else if (auto* bad = std::get_if<InvalidEvent>(&mapped)) {
      RETURN_IF_ERROR(OnInvalid(std::move(*bad)));
    } else if (auto* commit = std::get_if<TransactionCommit>(&mapped)) {
      tracker_.CommitTransaction(commit->end_lsn);
    }
    if (!mapper_.in_transaction()) {
      tracker_.ObserveServerWalEnd(data.wal_end);
    }
    return absl::OkStatus();
  }

  // Metrics of one delivery report (no-op without metrics).
  void ObserveDelivery(uint64_t sequence, const absl::Status& status) {
    metrics::OutboxdMetrics* m = options_.metrics;
    if (m == nullptr) return;
    if (!status.ok()) m->delivery_errors->Increment();
    auto it = published_.find(sequence);
    if (it == published_.end()) return;  // a dead-lettered record
    if (status.ok()) {
      m->PublishedTo(it->second.topic).Increment();
      int64_t ms = absl::ToUnixMillis(absl::Now()) -
                   it->second.commit_time_unix_ms;
      m->commit_to_ack_seconds->Observe(std::max<int64_t>(ms, 0) / 1000.0);
    }
    published_.erase(it);
  }

  absl::Status Publish(OutboxEvent event) {
    PublishedEvent meta;
    if (options_.metrics != nullptr) {
      meta.topic = options_.router.fixed_topic.empty()
                       ? absl::StrCat(options_.router.topic_prefix,
                                      event.aggregate_type)
                       : options_.router.fixed_topic;
      meta.commit_time_unix_ms = event.commit_time_unix_ms;
    }
    if (options_.value_format != ValueFormat::kPayload) {
      // The router publishes the payload as the value: make it the envelope.
      event.payload = EncodeValue(event, options_.value_format);
    }
    pending_ = Pending{std::move(event), tracker_.AddEvent()};
    if (options_.metrics != nullptr) {
      published_[pending_->sequence] = std::move(meta);
    }
    return TryProducePending();
  }

  absl::Status OnInvalid(InvalidEvent bad) {
    spdlog::warn("invalid event at {}#{}: {}",
                 bad.position.commit_lsn.ToString(), bad.position.index,
                 bad.reason);
    if (options_.on_invalid == InvalidEventPolicy::kFail) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid event at ", bad.position.commit_lsn.ToString(), "#",
          bad.position.index, ": ", bad.reason,
          " (--on-invalid=fail; the slot is not confirmed past it)"));
    }
    pending_ = Pending{std::move(bad), tracker_.AddEvent()};
    return TryProducePending();
  }

  // Produces pending_; leaves it in place when the queue is full.
  absl::Status TryProducePending() {
    absl::Status s;
    if (auto* event = std::get_if<OutboxEvent>(&pending_->item)) {
      s = producer_->Produce(Route(*event, router_),
                             pending_->sequence);
      if (s.ok()) {
        ++stats_->events_produced;
      } else if (!absl::IsResourceExhausted(s)) {
        // Not retriable as it is: dead-letter it (or fail, by policy).
        InvalidEvent bad = Unproducible(*event, s);
        if (options_.on_invalid == InvalidEventPolicy::kFail) {
          return absl::InvalidArgumentError(bad.reason);
        }
        spdlog::warn("event {} at {}#{}: {}", event->id,
                     bad.position.commit_lsn.ToString(), bad.position.index,
                     bad.reason);
        published_.erase(pending_->sequence);
        pending_->item = std::move(bad);
        return TryProducePending();
      }
    } else {
      const auto& bad = std::get<InvalidEvent>(pending_->item);
      s = producer_->Produce(DeadLetterRecord(bad, options_.dlq_topic),
                             pending_->sequence);
      if (s.ok()) {
        ++stats_->events_dead_lettered;
        if (options_.metrics != nullptr) {
          options_.metrics->dead_lettered->Increment();
        }
      } else if (!absl::IsResourceExhausted(s)) {
        return absl::Status(
            s.code(), absl::StrCat("dead-lettering to ", options_.dlq_topic,
                                   " failed: ", s.message()));
      }
    }
    if (s.ok()) pending_.reset();
    return absl::OkStatus();
  }

  absl::Status SendStatusIfDue(bool force) {
    absl::Time now = absl::Now();
    if (!force && now < next_status_) return absl::OkStatus();
    Lsn flushed = tracker_.ConfirmableLsn();
    RETURN_IF_ERROR(stream_->SendStatus(Lsn::Max(received_, flushed), flushed,
                                        /*reply_requested=*/false));
    if (flushed != reported_) {
      spdlog::debug("confirmed {}", flushed.ToString());
      reported_ = flushed;
    }
    stats_->confirmed = flushed;
    if (metrics::OutboxdMetrics* m = options_.metrics) {
      m->confirmed_lsn->Set(static_cast<double>(flushed.value()));
      m->server_wal_end->Set(static_cast<double>(received_.value()));
      m->slot_lag_bytes->Set(
          received_ > flushed
              ? static_cast<double>(received_.value() - flushed.value())
              : 0.0);
      m->events_in_flight->Set(static_cast<double>(tracker_.EventsInFlight()));
    }
    ++stats_->status_updates;
    next_status_ = now + options_.status_interval;
    return absl::OkStatus();
  }

  void LogProgress() {
    const MapperCounters& c = mapper_.counters();
    spdlog::info(
        "events produced {} acknowledged {} dead-lettered {} in flight {}, "
        "confirmed {}, ignored: other tables {} updates {} deletes {} "
        "non-transactional messages {}",
        stats_->events_produced, stats_->events_acknowledged,
        stats_->events_dead_lettered, tracker_.EventsInFlight(),
        tracker_.ConfirmableLsn().ToString(), c.ignored_other_tables,
        c.ignored_updates, c.ignored_deletes,
        c.ignored_nontransactional_messages);
  }

  // Waits for outstanding deliveries (bounded), confirms what is
  // acknowledged and ends the stream. After a failure it only confirms.
  absl::Status Finish(bool clean) {
    if (options_.metrics != nullptr) options_.metrics->streaming->Set(0);
    if (producer_ != nullptr && clean) {
      absl::Time deadline = absl::Now() + options_.shutdown_timeout;
      while (producer_->OutQueueLength() > 0 && absl::Now() < deadline) {
        producer_->Poll(absl::Milliseconds(50));
        if (stream_ != nullptr) SendStatusIfDue(false).IgnoreError();
      }
      if (producer_->OutQueueLength() > 0) {
        spdlog::warn("{} events not acknowledged at stop; they will be resent",
                     producer_->OutQueueLength());
      }
    }
    absl::Status s;
    if (stream_ != nullptr) {
      s = SendStatusIfDue(/*force=*/true);
      absl::Status stopped = stream_->Stop();
      if (s.ok()) s = stopped;
    }
    LogProgress();
    spdlog::info("confirmed position {}", tracker_.ConfirmableLsn().ToString());
    return s;
  }

  const CdcPipelineOptions& options_;
  PipelineStats* stats_;
  OutboxMapper mapper_;
  RouterOptions router_;  // options.router plus the source identity
  AckTracker tracker_;
  // Declared after the tracker: destroyed first, so no delivery report can
  // reach a destroyed tracker.
  std::unique_ptr<KafkaProducer> producer_;
  std::unique_ptr<ReplicationStream> stream_;
  std::optional<Pending> pending_;
  // Topic and commit time of each event in flight, by sequence (metrics).
  struct PublishedEvent {
    std::string topic;
    int64_t commit_time_unix_ms = 0;
  };
  absl::flat_hash_map<uint64_t, PublishedEvent> published_;
  Lsn received_;  // newest server position seen
  Lsn reported_;  // last flush position reported
  absl::Time next_status_ = absl::InfinitePast();
};

}  // namespace

absl::Status RunCdcPipeline(const CdcPipelineOptions& options,
                            const std::atomic<bool>& stop,
                            PipelineStats* stats) {
  PipelineStats local;
  CdcPipeline pipeline(options, stats != nullptr ? stats : &local);
  return pipeline.Run(stop);
}

}  // namespace outboxd
