#include "kafka/producer.h"

#include <librdkafka/rdkafka.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "common/wake_pipe.h"
#include "kafka/kafka_status.h"
#include "kafka/producer_stats.h"
#include "kafka/rdkafka_callbacks.h"
#include "kafka/rdkafka_conf.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

// The sequence travels in the message's pointer-sized opaque.
static_assert(sizeof(void*) >= sizeof(uint64_t),
              "the per-message opaque must hold a 64-bit sequence");

void* SequenceToOpaque(uint64_t sequence) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(sequence));
}

uint64_t OpaqueToSequence(void* opaque) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(opaque));
}

using ConfPtr = RdKafkaConfPtr;

struct HeadersDeleter {
  void operator()(rd_kafka_headers_t* headers) const {
    rd_kafka_headers_destroy(headers);
  }
};
using HeadersPtr = std::unique_ptr<rd_kafka_headers_t, HeadersDeleter>;

// outboxd's defaults (docs/ARCHITECTURE.md, "The record contract"), applied
// before user properties.
constexpr std::pair<const char*, const char*> kDefaultProperties[] = {
    {"client.id", "outboxd"},
    {"enable.idempotence", "true"},
    {"acks", "all"},
    // Keys land on the partition a Java client would choose.
    {"partitioner", "murmur2_random"},
    // 1 ms: a backlog needs it (with 0, librdkafka sends a small request
    // per partition whenever its thread wakes: 65 % more CPU per logical
    // message and a lower drain rate, README "Benchmarks"); live traffic
    // pays it once per batch of the Publisher's read coalescing.
    // --kafka-property=linger.ms=0 trades that for about 1 ms of latency.
    {"linger.ms", "1"},
    // Bounded memory: a full queue is backpressure on the WAL reader. Each
    // queued record also costs its headers and librdkafka's bookkeeping
    // (~0.5 KB besides the value), so the count bounds memory more than the
    // bytes do: 20,000 keeps outboxd's peak RSS under ~50 MB on the 1M-event
    // benchmark (100,000 peaked near 90 MB) and loses no throughput there
    // (benchmarks/results/throughput.md).
    {"queue.buffering.max.kbytes", "32768"},
    {"queue.buffering.max.messages", "20000"},
};

// An empty but present key or value must not become a null one: librdkafka
// treats a null pointer as "absent" (a tombstone for the value).
const char* NonNullData(absl::string_view bytes) {
  static const char kEmpty[1] = {0};
  return bytes.data() != nullptr ? bytes.data() : kEmpty;
}

// A transactional API error as a Status (see producer.h for the codes).
// Takes ownership of `error`; OK for nullptr.
absl::Status TxnErrorToStatus(rd_kafka_error_t* error,
                              absl::string_view context) {
  if (error == nullptr) return absl::OkStatus();
  std::string message = absl::StrCat(context, ": ", rd_kafka_error_name(error),
                                     ": ", rd_kafka_error_string(error));
  absl::Status status;
  if (rd_kafka_error_is_fatal(error)) {
    status = absl::AbortedError(message);
  } else if (rd_kafka_error_txn_requires_abort(error)) {
    status = absl::FailedPreconditionError(message);
  } else if (rd_kafka_error_is_retriable(error)) {
    status = absl::UnavailableError(message);
  } else if (rd_kafka_error_code(error) == RD_KAFKA_RESP_ERR__TIMED_OUT) {
    status = absl::UnavailableError(message);
  } else {
    // E.g. a call in the wrong state: a bug here, the transaction is lost.
    status = absl::FailedPreconditionError(message);
  }
  rd_kafka_error_destroy(error);
  return status;
}

// Kafka's own topics, which never hold a checkpoint. Only these: a user's
// topic may start with "__" too, and its checkpoint must be found.
bool IsKafkaInternalTopic(absl::string_view topic) {
  return topic == "__consumer_offsets" || topic == "__transaction_state" ||
         topic == "__share_group_state" || topic == "__cluster_metadata";
}

}  // namespace

struct KafkaProducer::Impl {
  rd_kafka_t* rk = nullptr;
  DeliveryCallback on_delivery;
  std::function<void(const ProducerStats&)> on_stats;
  // The first fatal error seen by the error callback.
  absl::Status fatal;
  // Set while the destructor runs: no callbacks into an owner going away.
  bool destroying = false;
  // librdkafka writes to it when the main queue becomes non-empty.
  WakePipe events;
  rd_kafka_queue_t* main_queue = nullptr;

  ~Impl() {
    if (rk != nullptr) {
      destroying = true;
      if (main_queue != nullptr) {
        rd_kafka_queue_io_event_enable(main_queue, -1, nullptr, 0);
        rd_kafka_queue_destroy(main_queue);
      }
      rd_kafka_destroy(rk);
    }
  }

  // librdkafka callbacks: `opaque` is this Impl (rd_kafka_conf_set_opaque).
  static void OnDelivery(rd_kafka_t* rk, const rd_kafka_message_t* message,
                         void* opaque) {
    auto* impl = static_cast<Impl*>(opaque);
    if (impl->destroying || !impl->on_delivery) return;
    absl::Status status;
    if (message->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      // Not rd_kafka_message_errstr(): on a delivery report it returns the
      // message's payload, which is neither an error text nor terminated.
      status = KafkaErrorToStatus(
          message->err,
          absl::StrCat("delivery to ", rd_kafka_topic_name(message->rkt)));
    }
    impl->on_delivery(OpaqueToSequence(message->_private), std::move(status));
  }

  // Statistics (served by rd_kafka_poll on the caller's thread).
  static int OnStats(rd_kafka_t* rk, char* json, size_t json_len,
                     void* opaque) {
    auto* impl = static_cast<Impl*>(opaque);
    if (impl->destroying || !impl->on_stats) return 0;
    std::optional<ProducerStats> stats =
        ParseProducerStats(absl::string_view(json, json_len));
    if (stats.has_value()) impl->on_stats(*stats);
    return 0;  // librdkafka frees `json`
  }

  static void OnError(rd_kafka_t* rk, int err, const char* reason,
                      void* opaque) {
    RecordRdKafkaError(rk, err, reason, &static_cast<Impl*>(opaque)->fatal);
  }
};

absl::StatusOr<std::unique_ptr<KafkaProducer>> KafkaProducer::Create(
    const ProducerOptions& options, DeliveryCallback on_delivery) {
  ConfPtr conf(rd_kafka_conf_new());
  if (absl::Status s =
          SetProperty(conf.get(), "bootstrap.servers", options.brokers);
      !s.ok()) {
    return s;
  }
  for (const auto& [name, value] : kDefaultProperties) {
    if (absl::Status s = SetProperty(conf.get(), name, value); !s.ok()) {
      return absl::InternalError(s.message());  // our default is wrong
    }
  }
  if (options.on_stats) {
    if (absl::Status s =
            SetProperty(conf.get(), "statistics.interval.ms", "1000");
        !s.ok()) {
      return absl::InternalError(s.message());
    }
  }
  if (!options.transactional_id.empty()) {
    if (absl::Status s = SetProperty(conf.get(), "transactional.id",
                                     options.transactional_id);
        !s.ok()) {
      return s;
    }
  }
  for (const auto& [name, value] : options.properties) {
    if (absl::Status s = SetProperty(conf.get(), name, value); !s.ok()) {
      return s;
    }
  }

  auto impl = std::make_unique<Impl>();
  impl->on_delivery = std::move(on_delivery);
  impl->on_stats = options.on_stats;
  if (impl->on_stats) rd_kafka_conf_set_stats_cb(conf.get(), &Impl::OnStats);
  rd_kafka_conf_set_opaque(conf.get(), impl.get());
  rd_kafka_conf_set_dr_msg_cb(conf.get(), &Impl::OnDelivery);
  rd_kafka_conf_set_error_cb(conf.get(), &Impl::OnError);
  rd_kafka_conf_set_log_cb(conf.get(), &RdKafkaLog);

  char errstr[512];
  // On success rd_kafka_new takes ownership of the configuration.
  impl->rk =
      rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), errstr, sizeof(errstr));
  if (impl->rk == nullptr) {
    // Conflicting properties (e.g. acks=1 with idempotence) end up here.
    return absl::InvalidArgumentError(
        absl::StrCat("kafka producer configuration: ", errstr));
  }
  conf.release();
  // Delivery reports and errors arrive on the main queue (what
  // rd_kafka_poll serves): a byte on the pipe says it is no longer empty.
  absl::StatusOr<WakePipe> events = WakePipe::Create();
  if (!events.ok()) return events.status();
  impl->events = *std::move(events);
  impl->main_queue = rd_kafka_queue_get_main(impl->rk);
  rd_kafka_queue_io_event_enable(impl->main_queue, impl->events.write_fd(), "1",
                                 1);
  return std::unique_ptr<KafkaProducer>(
      new KafkaProducer(std::move(impl), options));
}

KafkaProducer::KafkaProducer(std::unique_ptr<Impl> impl,
                             ProducerOptions options)
    : impl_(std::move(impl)), options_(std::move(options)) {}

KafkaProducer::~KafkaProducer() = default;

absl::Status KafkaProducer::Produce(const KafkaRecord& record,
                                    uint64_t sequence) {
  HeadersPtr headers(rd_kafka_headers_new(record.headers.size()));
  for (const auto& [name, value] : record.headers) {
    rd_kafka_header_add(headers.get(), name.data(),
                        static_cast<ssize_t>(name.size()), value.data(),
                        static_cast<ssize_t>(value.size()));
  }
  const void* value = nullptr;  // tombstone
  size_t value_size = 0;
  if (record.value.has_value()) {
    value = NonNullData(*record.value);
    value_size = record.value->size();
  }
  rd_kafka_resp_err_t err = rd_kafka_producev(
      impl_->rk, RD_KAFKA_V_TOPIC(record.topic.c_str()),
      RD_KAFKA_V_PARTITION(record.partition),
      RD_KAFKA_V_KEY(NonNullData(record.key), record.key.size()),
      RD_KAFKA_V_VALUE(const_cast<void*>(value), value_size),
      RD_KAFKA_V_TIMESTAMP(record.timestamp_ms),
      RD_KAFKA_V_HEADERS(headers.get()),
      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_OPAQUE(SequenceToOpaque(sequence)), RD_KAFKA_V_END);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    // `headers` is still ours and is destroyed here.
    return KafkaErrorToStatus(err, absl::StrCat("produce to ", record.topic));
  }
  headers.release();  // owned by the queued message now
  return absl::OkStatus();
}

void KafkaProducer::Poll(absl::Duration timeout) {
  // Drained first: a report queued after this is written again.
  impl_->events.Drain();
  rd_kafka_poll(impl_->rk, ToTimeoutMs(timeout));
}

int KafkaProducer::EventFd() const { return impl_->events.read_fd(); }

absl::Status KafkaProducer::Flush(absl::Duration timeout) {
  rd_kafka_resp_err_t err = rd_kafka_flush(impl_->rk, ToTimeoutMs(timeout));
  if (err == RD_KAFKA_RESP_ERR__TIMED_OUT) {
    return absl::DeadlineExceededError(
        absl::StrCat("kafka flush: ", rd_kafka_outq_len(impl_->rk),
                     " message(s) still queued or in flight after ",
                     absl::FormatDuration(timeout)));
  }
  return KafkaErrorToStatus(err, "kafka flush");
}

absl::StatusOr<TopicState> KafkaProducer::LookupTopic(const std::string& topic,
                                                      absl::Duration timeout) {
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(impl_->rk, topic.c_str(), nullptr);
  if (rkt == nullptr) {
    return KafkaErrorToStatus(rd_kafka_last_error(),
                              absl::StrCat("topic handle for ", topic));
  }
  const rd_kafka_metadata_t* md = nullptr;
  rd_kafka_resp_err_t err = rd_kafka_metadata(impl_->rk, /*all_topics=*/0, rkt,
                                              &md, ToTimeoutMs(timeout));
  rd_kafka_topic_destroy(rkt);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return KafkaErrorToStatus(err, absl::StrCat("metadata of ", topic));
  }
  std::unique_ptr<const rd_kafka_metadata_t,
                  void (*)(const rd_kafka_metadata_t*)>
      owned(md, &rd_kafka_metadata_destroy);
  for (int i = 0; i < md->topic_cnt; ++i) {
    if (topic != md->topics[i].topic) continue;
    switch (md->topics[i].err) {
      case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
        return TopicState::kMissing;
      case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
        return TopicState::kIllegal;
      default:
        // NO_ERROR, LEADER_NOT_AVAILABLE (being auto-created), or an error
        // (e.g. not authorized) that the produce reports as it always did.
        return TopicState::kExists;
    }
  }
  return absl::UnavailableError(
      absl::StrCat("metadata of ", topic, ": the topic is not in the reply"));
}

int KafkaProducer::OutQueueLength() const {
  return rd_kafka_outq_len(impl_->rk);
}

absl::Status KafkaProducer::fatal_error() const {
  if (!impl_->fatal.ok()) return impl_->fatal;
  // The error callback may not have been served yet: ask librdkafka.
  return RdKafkaFatalError(impl_->rk);
}

absl::StatusOr<std::string> KafkaProducer::ClusterId(absl::Duration timeout) {
  char* id = rd_kafka_clusterid(impl_->rk, ToTimeoutMs(timeout));
  if (id == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("no broker reported a cluster id within ",
                     absl::FormatDuration(timeout)));
  }
  std::string result(id);
  rd_kafka_mem_free(impl_->rk, id);
  return result;
}

absl::Status KafkaProducer::InitTransactions(absl::Duration timeout) {
  return TxnErrorToStatus(
      rd_kafka_init_transactions(impl_->rk, ToTimeoutMs(timeout)),
      "kafka init_transactions");
}

absl::Status KafkaProducer::BeginTransaction() {
  return TxnErrorToStatus(rd_kafka_begin_transaction(impl_->rk),
                          "kafka begin_transaction");
}

absl::Status KafkaProducer::SendCheckpoint(const std::string& group,
                                           const std::string& topic,
                                           int32_t partition, int64_t offset,
                                           const std::string& metadata,
                                           absl::Duration timeout) {
  rd_kafka_topic_partition_list_t* offsets =
      rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_t* tp =
      rd_kafka_topic_partition_list_add(offsets, topic.c_str(), partition);
  tp->offset = offset;
  // Freed with the list.
  tp->metadata = malloc(metadata.size());
  if (tp->metadata == nullptr && !metadata.empty()) {
    rd_kafka_topic_partition_list_destroy(offsets);
    return absl::ResourceExhaustedError("out of memory for the checkpoint");
  }
  if (!metadata.empty()) memcpy(tp->metadata, metadata.data(), metadata.size());
  tp->metadata_size = metadata.size();
  rd_kafka_consumer_group_metadata_t* cgmd =
      rd_kafka_consumer_group_metadata_new(group.c_str());
  rd_kafka_error_t* error = rd_kafka_send_offsets_to_transaction(
      impl_->rk, offsets, cgmd, ToTimeoutMs(timeout));
  rd_kafka_consumer_group_metadata_destroy(cgmd);
  rd_kafka_topic_partition_list_destroy(offsets);
  return TxnErrorToStatus(error, "kafka send_offsets_to_transaction");
}

absl::Status KafkaProducer::CommitTransaction(absl::Duration timeout) {
  return TxnErrorToStatus(
      rd_kafka_commit_transaction(impl_->rk, ToTimeoutMs(timeout)),
      "kafka commit_transaction");
}

absl::Status KafkaProducer::AbortTransaction(absl::Duration timeout) {
  // The abort waits until the purged records' delivery reports are served,
  // and those are served by rd_kafka_poll on this thread: abort in short
  // calls (each resumes the previous one) and poll in between.
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::Status s = TxnErrorToStatus(
        rd_kafka_abort_transaction(impl_->rk, 200), "kafka abort_transaction");
    if (s.ok() || !absl::IsUnavailable(s) || absl::Now() > deadline) return s;
    rd_kafka_poll(impl_->rk, 50);
  }
}

absl::StatusOr<std::vector<CommittedOffset>> KafkaProducer::ReadCheckpoints(
    const std::string& group, absl::Duration timeout) {
  return outboxd::ReadCheckpoints(options_, group, timeout);
}

absl::StatusOr<std::vector<CommittedOffset>> ReadCheckpoints(
    const ProducerOptions& options, const std::string& group,
    absl::Duration timeout) {
  const std::string context =
      absl::StrCat("reading the committed offsets of group ", group);
  ASSIGN_OR_RETURN(RdKafkaConfPtr conf,
                   ReaderConf(options.brokers, options.properties, group));
  char errstr[512];
  rd_kafka_t* rk =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), errstr, sizeof(errstr));
  if (rk == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(context, ": ", errstr));
  }
  conf.release();
  RdKafkaPtr client(rk);

  // The checkpoint is committed on partition 0 of one of the source's
  // topics, which may be any topic: ask for partition 0 of all of them.
  const rd_kafka_metadata_t* metadata = nullptr;
  rd_kafka_resp_err_t err = rd_kafka_metadata(rk, /*all_topics=*/1, nullptr,
                                              &metadata, ToTimeoutMs(timeout));
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::UnavailableError(
        absl::StrCat(context, ": metadata: ", rd_kafka_err2name(err)));
  }
  rd_kafka_topic_partition_list_t* list =
      rd_kafka_topic_partition_list_new(metadata->topic_cnt);
  for (int i = 0; i < metadata->topic_cnt; ++i) {
    const rd_kafka_metadata_topic_t& t = metadata->topics[i];
    if (t.err != RD_KAFKA_RESP_ERR_NO_ERROR || t.partition_cnt == 0) continue;
    if (IsKafkaInternalTopic(t.topic)) continue;
    rd_kafka_topic_partition_list_add(list, t.topic, 0);
  }
  rd_kafka_metadata_destroy(metadata);
  PartitionListPtr owned(list);
  std::vector<CommittedOffset> offsets;
  if (list->cnt == 0) return offsets;
  err = rd_kafka_committed(rk, list, ToTimeoutMs(timeout));
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::UnavailableError(
        absl::StrCat(context, ": ", rd_kafka_err2name(err)));
  }
  for (int i = 0; i < list->cnt; ++i) {
    const rd_kafka_topic_partition_t& tp = list->elems[i];
    if (tp.err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      // A partition whose checkpoint cannot be read may hold the newest
      // one: never guess.
      return absl::UnavailableError(
          absl::StrCat(context, ": ", tp.topic, "[", tp.partition,
                       "]: ", rd_kafka_err2name(tp.err)));
    }
    if (tp.offset < 0) continue;  // nothing committed there
    CommittedOffset c;
    c.topic = tp.topic;
    c.partition = tp.partition;
    c.offset = tp.offset;
    if (tp.metadata != nullptr) {
      c.metadata.assign(static_cast<const char*>(tp.metadata),
                        tp.metadata_size);
    }
    offsets.push_back(std::move(c));
  }
  return offsets;
}

SinkFactory KafkaSinkFactory() {
  return [](const ProducerOptions& options, DeliveryCallback on_delivery)
             -> absl::StatusOr<std::unique_ptr<Sink>> {
    auto producer = KafkaProducer::Create(options, std::move(on_delivery));
    if (!producer.ok()) return producer.status();
    return std::unique_ptr<Sink>(*std::move(producer));
  };
}

}  // namespace outboxd
