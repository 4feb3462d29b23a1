#include "kafka/read_back.h"

#include <librdkafka/rdkafka.h>

#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "kafka/rdkafka_conf.h"

namespace outboxd {
namespace {

constexpr absl::string_view kContext = "reading back from Kafka";

bool NotAuthorized(rd_kafka_resp_err_t err) {
  return err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
         err == RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED ||
         err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED;
}

// kPermissionDenied for an authorization error (it will not pass by
// itself), kUnavailable for anything else.
absl::Status Unavailable(absl::string_view what, rd_kafka_resp_err_t err) {
  std::string message =
      absl::StrCat(kContext, ": ", what, ": ", rd_kafka_err2name(err));
  if (NotAuthorized(err)) return absl::PermissionDeniedError(message);
  return absl::UnavailableError(message);
}

// Every partition of the asked topics that exist, each at offset
// `since_unix_ms` (a timestamp, for rd_kafka_offsets_for_times).
absl::StatusOr<PartitionListPtr> PartitionsAt(rd_kafka_t* rk,
                                              const ReadBackRequest& request,
                                              absl::Time deadline) {
  const rd_kafka_metadata_t* metadata = nullptr;
  rd_kafka_resp_err_t err =
      rd_kafka_metadata(rk, /*all_topics=*/1, nullptr, &metadata,
                        ToTimeoutMs(deadline - absl::Now()));
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return Unavailable("metadata", err);
  PartitionListPtr list(rd_kafka_topic_partition_list_new(16));
  for (int i = 0; i < metadata->topic_cnt; ++i) {
    const rd_kafka_metadata_topic_t& t = metadata->topics[i];
    bool asked = false;
    for (const std::string& topic : request.topics) asked |= topic == t.topic;
    if (!asked || t.err != RD_KAFKA_RESP_ERR_NO_ERROR) continue;
    for (int p = 0; p < t.partition_cnt; ++p) {
      rd_kafka_topic_partition_list_add(list.get(), t.topic, t.partitions[p].id)
          ->offset = request.since_unix_ms;
    }
  }
  rd_kafka_metadata_destroy(metadata);
  return list;
}

// Reads the assigned partitions to their end, collecting the asked ids.
absl::Status ReadToEnd(rd_kafka_t* rk, int partitions,
                       const ReadBackRequest& request, absl::Time deadline,
                       absl::flat_hash_set<std::string>& found) {
  std::map<std::pair<std::string, int32_t>, bool> at_end;
  while (static_cast<int>(at_end.size()) < partitions &&
         found.size() < request.ids.size()) {
    if (absl::Now() > deadline) {
      return absl::UnavailableError(
          absl::StrCat(kContext, ": ", partitions - at_end.size(), " of ",
                       partitions, " partitions not read to their end within ",
                       absl::FormatDuration(request.timeout)));
    }
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk, 200);
    if (m == nullptr) continue;
    if (NotAuthorized(m->err)) {
      absl::Status denied = Unavailable(
          m->rkt != nullptr ? rd_kafka_topic_name(m->rkt) : "fetch", m->err);
      rd_kafka_message_destroy(m);
      return denied;
    }
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      at_end[{rd_kafka_topic_name(m->rkt), m->partition}] = true;
    } else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR &&
               rd_kafka_message_timestamp(m, nullptr) >=
                   request.since_unix_ms) {
      // (Older records come from a partition read from its start.)
      rd_kafka_headers_t* headers = nullptr;
      const void* value = nullptr;
      size_t size = 0;
      if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR &&
          rd_kafka_header_get_last(headers, "id", &value, &size) ==
              RD_KAFKA_RESP_ERR_NO_ERROR &&
          value != nullptr) {
        std::string id(static_cast<const char*>(value), size);
        if (request.ids.contains(id)) found.insert(std::move(id));
      }
    }
    // Other errors (a broker away for a moment) are retried by librdkafka
    // until the deadline.
    rd_kafka_message_destroy(m);
  }
  return absl::OkStatus();
}

// The offsets of `list`'s timestamps, looked up; an error for a partition
// is the whole answer's.
absl::Status LookUpTimes(rd_kafka_t* rk, rd_kafka_topic_partition_list_t* list,
                         absl::Time deadline) {
  rd_kafka_resp_err_t err =
      rd_kafka_offsets_for_times(rk, list, ToTimeoutMs(deadline - absl::Now()));
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Unavailable("offsets for times", err);
  }
  for (int i = 0; i < list->cnt; ++i) {
    const rd_kafka_topic_partition_t& tp = list->elems[i];
    if (tp.err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return Unavailable(absl::StrCat(tp.topic, "[", tp.partition, "]"),
                         tp.err);
    }
  }
  return absl::OkStatus();
}

// Where to start reading each partition of `at_times` (timestamps): the
// first record at or after the time. "None" (-1) is checked by asking for
// the time 0: a broker that has records but finds none even then does not
// look times up (librdkafka's mock cluster), and its partition is read
// from the start. A partition with nothing to read is left out.
absl::StatusOr<PartitionListPtr> StartOffsets(
    rd_kafka_t* rk, const rd_kafka_topic_partition_list_t& at_times,
    absl::Time deadline) {
  PartitionListPtr list(rd_kafka_topic_partition_list_copy(&at_times));
  RETURN_IF_ERROR(LookUpTimes(rk, list.get(), deadline));
  PartitionListPtr none(rd_kafka_topic_partition_list_new(list->cnt));
  PartitionListPtr start(rd_kafka_topic_partition_list_new(list->cnt));
  for (int i = 0; i < list->cnt; ++i) {
    const rd_kafka_topic_partition_t& tp = list->elems[i];
    rd_kafka_topic_partition_list_add(tp.offset < 0 ? none.get() : start.get(),
                                      tp.topic, tp.partition)
        ->offset = tp.offset < 0 ? 0 : tp.offset;
  }
  if (none->cnt == 0) return start;
  RETURN_IF_ERROR(LookUpTimes(rk, none.get(), deadline));
  for (int i = 0; i < none->cnt; ++i) {
    const rd_kafka_topic_partition_t& tp = none->elems[i];
    if (tp.offset >= 0) continue;  // times work: nothing after the time
    int64_t low = 0;
    int64_t high = 0;
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
        rk, tp.topic, tp.partition, &low, &high,
        ToTimeoutMs(deadline - absl::Now()));
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      return Unavailable(absl::StrCat(tp.topic, "[", tp.partition, "]"), err);
    }
    if (high > low) {
      rd_kafka_topic_partition_list_add(start.get(), tp.topic, tp.partition)
          ->offset = low;
    }
  }
  return start;
}

}  // namespace

absl::StatusOr<absl::flat_hash_set<std::string>> FindIdsInKafka(
    const ReadBackRequest& request) {
  absl::flat_hash_set<std::string> found;
  if (request.ids.empty() || request.topics.empty()) return found;
  const absl::Time deadline = absl::Now() + request.timeout;
  ASSIGN_OR_RETURN(
      RdKafkaConfPtr conf,
      ReaderConf(request.brokers, request.properties, "outboxd-read-back"));
  RETURN_IF_ERROR(SetProperty(conf.get(), "enable.partition.eof", "true"));
  char errstr[512];
  rd_kafka_t* rk =
      rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), errstr, sizeof(errstr));
  if (rk == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(kContext, ": ", errstr));
  }
  conf.release();
  RdKafkaPtr client(rk);
  rd_kafka_poll_set_consumer(rk);

  ASSIGN_OR_RETURN(PartitionListPtr list, PartitionsAt(rk, request, deadline));
  if (list->cnt == 0) return found;
  ASSIGN_OR_RETURN(PartitionListPtr assigned,
                   StartOffsets(rk, *list, deadline));
  if (assigned->cnt == 0) return found;
  rd_kafka_resp_err_t err = rd_kafka_assign(rk, assigned.get());
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) return Unavailable("assign", err);
  absl::Status read = ReadToEnd(rk, assigned->cnt, request, deadline, found);
  rd_kafka_consumer_close(rk);
  RETURN_IF_ERROR(read);
  return found;
}

}  // namespace outboxd
