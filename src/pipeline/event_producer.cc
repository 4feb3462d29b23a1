#include "pipeline/event_producer.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace outboxd {
namespace {

// How long one metadata lookup of a topic may block the publisher's thread
// (the source's keep-alive waits meanwhile; wal_sender_timeout is longer).
constexpr absl::Duration kTopicLookupTimeout = absl::Seconds(3);

}  // namespace

void EventProducer::Attach(Sink& sink) {
  sink_ = &sink;
  catalog_ = std::make_unique<TopicCatalog>([&sink](const std::string& topic) {
    return sink.LookupTopic(topic, kTopicLookupTimeout);
  });
}

absl::Status EventProducer::Publish(SourceSession& st, uint64_t tag,
                                    OutboxEvent event) {
  const std::optional<uint64_t> id_hash = IdHash(st, event.id);
  if (std::optional<InvalidEvent> bad = st.records().Prepare(event)) {
    // Dead-lettered under its id: the reconciler counts it as published.
    return PublishInvalid(st, tag, *std::move(bad), id_hash);
  }
  if (!event.dropped_headers.empty()) {
    // Where() formats a string: only for the events it is logged for.
    st.reserved_headers().Note(event, Where(event));
  }
  st.pending = SourceSession::Pending{std::move(event), st.tracker().AddEvent(),
                                      id_hash};
  return TryProducePending(st, tag);
}

absl::Status EventProducer::PublishInvalid(SourceSession& st, uint64_t tag,
                                           InvalidEvent bad,
                                           std::optional<uint64_t> id_hash) {
  RETURN_IF_ERROR(ReportInvalid(st, bad));
  st.pending =
      SourceSession::Pending{std::move(bad), st.tracker().AddEvent(), id_hash};
  return TryProducePending(st, tag);
}

absl::Status EventProducer::ReportInvalid(SourceSession& st,
                                          const InvalidEvent& bad) {
  st.metrics().invalid_events->Increment();
  const std::string where = Where(bad);
  spdlog::warn("{}invalid event {}: {}", st.log_prefix(), where, bad.reason);
  if (on_invalid_ == InvalidEventPolicy::kFail) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid event ", where, ": ", bad.reason,
        " (--on-invalid=fail; the source is not confirmed past it)"));
  }
  return absl::OkStatus();
}

// An event whose topic cannot take it, or that cannot be produced as it
// is, becomes an invalid event (at most once) and is dead-lettered by
// policy.
absl::Status EventProducer::TryProducePending(SourceSession& st, uint64_t tag) {
  const uint64_t tagged = tag | st.pending->sequence;
  bool done = false;
  while (!done) {
    if (std::holds_alternative<OutboxEvent>(st.pending->item)) {
      RETURN_IF_ERROR(ProduceEvent(st, tagged, done));
    } else {
      RETURN_IF_ERROR(ProduceDeadLetter(st, tagged, done));
    }
  }
  return absl::OkStatus();
}

// `done` unless the event became an invalid event to dead-letter.
absl::Status EventProducer::ProduceEvent(SourceSession& st, uint64_t tagged,
                                         bool& done) {
  done = true;
  const auto& event = std::get<OutboxEvent>(st.pending->item);
  if (delivery_.Skips({event.position, event.commit_time_unix_ms})) {
    // In Kafka already: it counts as acknowledged.
    st.tracker().Acknowledge(st.pending->sequence);
    NoteAcknowledged(st, st.pending->id_hash);
    st.pending.reset();
    return absl::OkStatus();
  }
  KafkaRecord record = st.records().Route(event);
  absl::Status topic = CheckTopic(st, record.topic);
  if (absl::IsUnavailable(topic)) return absl::OkStatus();  // later
  if (!topic.ok()) {
    st.pending->item = RecordBuilder::Misrouted(event, record.topic, topic);
    done = false;
    return ReportInvalid(st, std::get<InvalidEvent>(st.pending->item));
  }
  RETURN_IF_ERROR(delivery_.BeforeProduce());
  absl::Status s = sink_->Produce(record, tagged);
  if (s.ok()) {
    delivery_.Produced(tagged, {event.position, event.commit_time_unix_ms},
                       record.topic);
    ++stats_.events_produced;
    PublishedEvent& published = published_[tagged];
    published = {&st.metrics().PublishedTo(record.topic), st.pending->id_hash,
                 event.commit_time_unix_ms, event.position.commit_lsn.value()};
    st.stages().Produced(event.position.commit_lsn.value(),
                         event.commit_time_unix_ms);
    if (keep_refused_) {
      // The record is a copy in the sink now: a move, no copy.
      published.event = std::get<OutboxEvent>(std::move(st.pending->item));
    }
    st.pending.reset();
    return absl::OkStatus();
  }
  if (absl::IsResourceExhausted(s)) return absl::OkStatus();
  // Not producible as it is: dead-letter it (or fail, by policy).
  InvalidEvent bad = RecordBuilder::Unproducible(event, s);
  if (on_invalid_ == InvalidEventPolicy::kFail) {
    return absl::InvalidArgumentError(absl::StrCat(
        "event ", event.id, " ", Where(event), ": ", bad.reason,
        " (--on-invalid=fail; the source is not confirmed past it)"));
  }
  spdlog::warn("{}event {} {}: {}", st.log_prefix(), event.id, Where(event),
               bad.reason);
  st.pending->item = std::move(bad);
  done = false;
  return absl::OkStatus();
}

absl::Status EventProducer::ProduceDeadLetter(SourceSession& st,
                                              uint64_t tagged, bool& done) {
  done = true;
  const auto& bad = std::get<InvalidEvent>(st.pending->item);
  if (delivery_.Skips({bad.position, bad.commit_time_unix_ms})) {
    st.tracker().Acknowledge(st.pending->sequence);
    NoteAcknowledged(st, st.pending->id_hash);
    st.pending.reset();
    return absl::OkStatus();
  }
  KafkaRecord record = st.records().DeadLetter(bad);
  absl::Status topic = CheckTopic(st, record.topic);
  if (absl::IsUnavailable(topic)) return absl::OkStatus();  // later
  if (!topic.ok()) {
    // Never dropped: the event stays unconfirmed, resent on restart.
    return absl::FailedPreconditionError(
        absl::StrCat("cannot dead-letter the invalid event ", Where(bad), " (",
                     bad.reason, "): dead-letter topic: ", topic.message(),
                     "; the source is not confirmed past it"));
  }
  RETURN_IF_ERROR(delivery_.BeforeProduce());
  absl::Status s = sink_->Produce(record, tagged);
  if (s.ok()) {
    delivery_.Produced(tagged, {bad.position, bad.commit_time_unix_ms},
                       record.topic);
    ++stats_.events_dead_lettered;
    st.metrics().dead_lettered->Increment();
    if (st.pending->id_hash.has_value()) {
      published_[tagged] = {nullptr, st.pending->id_hash, 0, 0};
    }
    st.stages().Produced(bad.position.commit_lsn.value(),
                         bad.commit_time_unix_ms);
    st.pending.reset();
    return absl::OkStatus();
  }
  if (absl::IsResourceExhausted(s)) return absl::OkStatus();
  return absl::Status(s.code(), absl::StrCat("dead-lettering to ", record.topic,
                                             " failed: ", s.message()));
}

absl::Status EventProducer::CheckTopic(SourceSession& st,
                                       const std::string& topic) {
  absl::Status s = catalog_->Check(topic);
  st.waiting_for_topic = absl::IsUnavailable(s);
  if (absl::IsUnavailable(s)) {
    if (s.message() != last_topic_wait_) {
      spdlog::warn("{}; the event waits", std::string(s.message()));
      last_topic_wait_ = std::string(s.message());
    }
  } else {
    last_topic_wait_.clear();
  }
  return s;
}

std::optional<OutboxEvent> EventProducer::ObserveReport(
    SourceSession& st, uint64_t tagged, const absl::Status& status) {
  if (status.ok()) st.stall().Acknowledged();
  auto it = published_.find(tagged);
  if (it == published_.end()) return std::nullopt;  // a dead-lettered record
  if (status.ok()) NoteAcknowledged(st, it->second.id_hash);
  std::optional<OutboxEvent> refused;
  if (IsPermanentRefusal(status)) refused = std::move(it->second.event);
  if (status.ok() && it->second.published_to != nullptr) {
    it->second.published_to->Increment();
    st.stages().Acknowledged(it->second.commit_lsn,
                             it->second.commit_time_unix_ms);
    const int64_t ms =
        absl::ToUnixMillis(absl::Now()) - it->second.commit_time_unix_ms;
    st.metrics().commit_to_ack_seconds->Observe(std::max<int64_t>(ms, 0) /
                                                1000.0);
  }
  published_.erase(it);
  return refused;
}

absl::Status EventProducer::RetryRefused(SourceSession& st, uint64_t tag) {
  if (st.retrying_alone.has_value() || st.pending.has_value() ||
      st.refused.empty()) {
    return absl::OkStatus();
  }
  // Alone: no other record in flight that the broker could batch with it.
  if (sink_->OutQueueLength() > 0) return absl::OkStatus();
  SourceSession::Refused& r = st.refused.front();
  const uint64_t tagged = tag | r.sequence;
  if (!r.alone) {
    KafkaRecord record = st.records().Route(r.event);
    absl::Status s = sink_->Produce(record, tagged);
    if (absl::IsResourceExhausted(s)) return absl::OkStatus();
    if (s.ok()) {
      PublishedEvent& published = published_[tagged];
      published = {&st.metrics().PublishedTo(record.topic),
                   IdHash(st, r.event.id), r.event.commit_time_unix_ms,
                   r.event.position.commit_lsn.value()};
      published.event = std::move(r.event);
      st.retrying_alone = r.sequence;
      st.refused.pop_front();
      return absl::OkStatus();
    }
    r.cause = std::move(s);  // the producer refuses it itself now
  }
  // Refused on its own: the broker's reason is this event's. Dead-lettered
  // like an event the producer refuses (or the run stops, by policy).
  InvalidEvent bad = RecordBuilder::Unproducible(r.event, r.cause);
  spdlog::warn("{}event {} {}: refused by the broker on its own: {}",
               st.log_prefix(), r.event.id, Where(r.event),
               std::string(r.cause.message()));
  st.pending = SourceSession::Pending{std::move(bad), r.sequence,
                                      IdHash(st, r.event.id)};
  st.refused.pop_front();
  RETURN_IF_ERROR(ReportInvalid(st, std::get<InvalidEvent>(st.pending->item)));
  return TryProducePending(st, tag);
}

std::optional<uint64_t> EventProducer::IdHash(const SourceSession& st,
                                              const std::string& id) {
  if (st.acknowledged() == nullptr || id.empty()) return std::nullopt;
  return AcknowledgedIds::Hash(id);
}

void EventProducer::NoteAcknowledged(SourceSession& st,
                                     std::optional<uint64_t> id_hash) {
  if (id_hash.has_value() && st.acknowledged() != nullptr) {
    st.acknowledged()->Add(*id_hash);
  }
}

}  // namespace outboxd
