#include "kafka/read_back.h"

#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
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

// The low and high watermarks of a partition, asked of the broker.
absl::StatusOr<std::pair<int64_t, int64_t>> Watermarks(
    rd_kafka_t* rk, const rd_kafka_topic_partition_t& tp, absl::Time deadline) {
  int64_t low = 0;
  int64_t high = 0;
  rd_kafka_resp_err_t err =
      rd_kafka_query_watermark_offsets(rk, tp.topic, tp.partition, &low, &high,
                                       ToTimeoutMs(deadline - absl::Now()));
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return Unavailable(absl::StrCat(tp.topic, "[", tp.partition, "]"), err);
  }
  return std::make_pair(low, high);
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
  // A read from the partition's first record may have missed records
  // retention deleted (the time is older than what Kafka keeps).
  for (int i = 0; i < start->cnt; ++i) {
    const rd_kafka_topic_partition_t& tp = start->elems[i];
    ASSIGN_OR_RETURN(auto marks, Watermarks(rk, tp, deadline));
    if (marks.first > 0 && tp.offset == marks.first) {
      return absl::FailedPreconditionError(
          absl::StrCat(kContext, ": ", tp.topic, "[", tp.partition,
                       "] starts at offset ", marks.first,
                       " with a record from after the time: records of the "
                       "time may have been deleted (retention)"));
    }
  }
  if (none->cnt == 0) return start;
  RETURN_IF_ERROR(LookUpTimes(rk, none.get(), deadline));
  for (int i = 0; i < none->cnt; ++i) {
    const rd_kafka_topic_partition_t& tp = none->elems[i];
    if (tp.offset >= 0) continue;  // times work: nothing after the time
    ASSIGN_OR_RETURN(auto marks, Watermarks(rk, tp, deadline));
    if (marks.second > marks.first) {
      rd_kafka_topic_partition_list_add(start.get(), tp.topic, tp.partition)
          ->offset = marks.first;
    }
  }
  return start;
}

// Kafka keeps only the newest record of a key in a compacted topic: what
// it lacks then says nothing. kFailedPrecondition naming such a topic. A
// broker that does not answer the question within a few seconds (a
// principal without DescribeConfigs) is taken as not compacting; the dev
// broker (librdkafka's mock cluster, which has no such request) is not
// asked.
absl::Status CheckNotCompacted(rd_kafka_t* rk,
                               const std::vector<std::string>& topics,
                               absl::Time deadline) {
  char* cluster = rd_kafka_clusterid(rk, ToTimeoutMs(deadline - absl::Now()));
  const bool mock =
      cluster != nullptr && absl::StartsWith(cluster, "mockCluster");
  if (cluster != nullptr) rd_kafka_mem_free(rk, cluster);
  if (mock) return absl::OkStatus();
  deadline = std::min(deadline, absl::Now() + absl::Seconds(10));
  std::vector<rd_kafka_ConfigResource_t*> resources;
  for (const std::string& t : topics) {
    resources.push_back(
        rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, t.c_str()));
  }
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  rd_kafka_AdminOptions_t* options =
      rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
  char errstr[256];
  rd_kafka_AdminOptions_set_request_timeout(
      options, ToTimeoutMs(deadline - absl::Now()), errstr, sizeof(errstr));
  rd_kafka_DescribeConfigs(rk, resources.data(), resources.size(), options,
                           queue);
  rd_kafka_event_t* event =
      rd_kafka_queue_poll(queue, ToTimeoutMs(deadline - absl::Now()));
  absl::Status status = absl::OkStatus();
  const rd_kafka_DescribeConfigs_result_t* result =
      event != nullptr && rd_kafka_event_error(event) == 0
          ? rd_kafka_event_DescribeConfigs_result(event)
          : nullptr;
  size_t count = 0;
  const rd_kafka_ConfigResource_t** described =
      result != nullptr
          ? rd_kafka_DescribeConfigs_result_resources(result, &count)
          : nullptr;
  for (size_t i = 0; i < count && status.ok(); ++i) {
    if (rd_kafka_ConfigResource_error(described[i]) != 0) continue;
    size_t n = 0;
    const rd_kafka_ConfigEntry_t** entries =
        rd_kafka_ConfigResource_configs(described[i], &n);
    for (size_t e = 0; e < n; ++e) {
      const char* value = rd_kafka_ConfigEntry_value(entries[e]);
      if (absl::string_view(rd_kafka_ConfigEntry_name(entries[e])) ==
              "cleanup.policy" &&
          value != nullptr && absl::StrContains(value, "compact")) {
        status = absl::FailedPreconditionError(absl::StrCat(
            kContext, ": topic ", rd_kafka_ConfigResource_name(described[i]),
            " is compacted (cleanup.policy=", value,
            "): what it lacks may have been compacted away"));
      }
    }
  }
  if (event != nullptr) rd_kafka_event_destroy(event);
  rd_kafka_AdminOptions_destroy(options);
  rd_kafka_queue_destroy(queue);
  for (rd_kafka_ConfigResource_t* r : resources) {
    rd_kafka_ConfigResource_destroy(r);
  }
  return status;
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
  RETURN_IF_ERROR(CheckNotCompacted(rk, request.topics, deadline));
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
