#include "benchmarks/bench_kafka.h"

#include <string.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmarks/bench_pg.h"
#include "benchmarks/bench_proc.h"

namespace outboxd::bench {

namespace {

absl::Status SetConf(rd_kafka_conf_t* conf, const char* name,
                     const std::string& value) {
  char errstr[512];
  if (rd_kafka_conf_set(conf, name, value.c_str(), errstr, sizeof(errstr)) !=
      RD_KAFKA_CONF_OK) {
    return absl::InvalidArgumentError(
        absl::StrCat("librdkafka ", name, ": ", errstr));
  }
  return absl::OkStatus();
}

void QuietLog(const rd_kafka_t*, int level, const char* fac, const char* buf) {
  if (level <= 3) std::fprintf(stderr, "bench kafka %s: %s\n", fac, buf);
}

}  // namespace

absl::StatusOr<rd_kafka_t*> NewKafkaHandle(
    rd_kafka_type_t type,
    const std::vector<std::pair<const char*, std::string>>& settings) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(conf, QuietLog);
  for (const auto& [name, value] : settings) {
    absl::Status s = SetConf(conf, name, value);
    if (!s.ok()) {
      rd_kafka_conf_destroy(conf);
      return s;
    }
  }
  char errstr[512];
  rd_kafka_t* rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
  if (rk == nullptr) {
    rd_kafka_conf_destroy(conf);
    return absl::InternalError(absl::StrCat("rd_kafka_new: ", errstr));
  }
  return rk;
}

absl::StatusOr<std::unique_ptr<ReceiptRecorder>> ReceiptRecorder::Start(
    const std::string& bootstrap, const std::string& topic, int partitions,
    size_t capacity, int fetch_wait_ms) {
  static std::atomic<int> count{0};
  auto handle = NewKafkaHandle(
      RD_KAFKA_CONSUMER,
      {
          {"bootstrap.servers", bootstrap},
          {"group.id", absl::StrCat("outboxd-bench-", getpid(), "-", count++)},
          {"enable.auto.commit", "false"},
          {"enable.auto.offset.store", "false"},
          {"auto.offset.reset", "earliest"},
          // The mock broker answers an empty fetch after fetch.wait.max.ms (it
          // does not wake up on new data), so this bounds the time a record
          // waits in the broker before this consumer asks for it.
          {"fetch.wait.max.ms", absl::StrCat(fetch_wait_ms)},
          {"fetch.error.backoff.ms", "1"},
          {"fetch.min.bytes", "1"},
          {"log.connection.close", "false"},
      });
  if (!handle.ok()) return handle.status();
  rd_kafka_t* rk = *handle;
  rd_kafka_poll_set_consumer(rk);
  rd_kafka_topic_partition_list_t* list =
      rd_kafka_topic_partition_list_new(partitions);
  for (int p = 0; p < partitions; ++p) {
    rd_kafka_topic_partition_list_add(list, topic.c_str(), p)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
  }
  rd_kafka_resp_err_t err = rd_kafka_assign(rk, list);
  rd_kafka_topic_partition_list_destroy(list);
  if (err) {
    rd_kafka_destroy(rk);
    return absl::InternalError(
        absl::StrCat("rd_kafka_assign: ", rd_kafka_err2str(err)));
  }
  std::unique_ptr<ReceiptRecorder> r(new ReceiptRecorder());
  r->rk_ = rk;
  r->receipts_.assign(capacity, 0);
  r->thread_ = std::thread([p = r.get()] { p->Run(); });
  return r;
}

void ReceiptRecorder::Run() {
  while (!stop_.load(std::memory_order_relaxed)) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 50);
    if (m == nullptr) continue;
    int64_t now = NowNs();
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      int64_t id = ParseBenchId(static_cast<const char*>(m->payload), m->len);
      if (id < 0) {
        warmups_.fetch_add(1);
      } else if (static_cast<size_t>(id) < receipts_.size()) {
        if (receipts_[id] == 0) {
          receipts_[id] = now;
          received_.fetch_add(1);
          last_receipt_ns_.store(now);
        } else {
          duplicates_.fetch_add(1);
        }
      }
    }
    rd_kafka_message_destroy(m);
  }
}

void ReceiptRecorder::Stop() {
  if (stop_.exchange(true)) return;
  if (thread_.joinable()) thread_.join();
}

ReceiptRecorder::~ReceiptRecorder() {
  Stop();
  rd_kafka_consumer_close(rk_);
  rd_kafka_destroy(rk_);
}

absl::StatusOr<std::unique_ptr<WatermarkProbe>> WatermarkProbe::Create(
    const std::string& bootstrap) {
  auto handle =
      NewKafkaHandle(RD_KAFKA_PRODUCER, {{"bootstrap.servers", bootstrap}});
  if (!handle.ok()) return handle.status();
  rd_kafka_t* rk = *handle;
  std::unique_ptr<WatermarkProbe> p(new WatermarkProbe());
  p->rk_ = rk;
  return p;
}

WatermarkProbe::~WatermarkProbe() { rd_kafka_destroy(rk_); }

absl::StatusOr<int64_t> WatermarkProbe::Total(const std::string& topic,
                                              int partitions) {
  int64_t total = 0;
  for (int p = 0; p < partitions; ++p) {
    int64_t low = 0, high = 0;
    rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
        rk_, topic.c_str(), p, &low, &high, 5000);
    if (err) {
      return absl::UnavailableError(absl::StrCat(
          "watermarks of ", topic, "/", p, ": ", rd_kafka_err2str(err)));
    }
    total += high;
  }
  return total;
}

RecordArrival WaitForRecords(WatermarkProbe& probe, const std::string& topic,
                             int partitions, int64_t target,
                             absl::Duration timeout,
                             const std::function<bool()>& alive) {
  RecordArrival arrival;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    auto total = probe.Total(topic, partitions);
    const int64_t now = NowNs();
    if (total.ok()) {
      arrival.last_total = *total;
      if (arrival.first_ns == 0 && *total > 0) arrival.first_ns = now;
      if (*total >= target) {
        arrival.done_ns = now;
        break;
      }
    }
    if (!alive()) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return arrival;
}

absl::Status CreateTopics(const std::string& bootstrap,
                          const std::vector<std::string>& topics,
                          int partitions) {
  auto handle =
      NewKafkaHandle(RD_KAFKA_PRODUCER, {{"bootstrap.servers", bootstrap}});
  if (!handle.ok()) return handle.status();
  rd_kafka_t* rk = *handle;
  char errstr[512];
  std::vector<rd_kafka_NewTopic_t*> news;
  for (const std::string& t : topics) {
    news.push_back(rd_kafka_NewTopic_new(t.c_str(), partitions, 1, errstr,
                                         sizeof(errstr)));
  }
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  rd_kafka_CreateTopics(rk, news.data(), news.size(), nullptr, queue);
  absl::Status status;
  rd_kafka_event_t* ev = rd_kafka_queue_poll(queue, 30000);
  if (ev == nullptr) {
    status = absl::DeadlineExceededError("CreateTopics: no answer in 30 s");
  } else {
    const rd_kafka_CreateTopics_result_t* result =
        rd_kafka_event_CreateTopics_result(ev);
    size_t n = 0;
    const rd_kafka_topic_result_t** results =
        result ? rd_kafka_CreateTopics_result_topics(result, &n) : nullptr;
    if (result == nullptr) {
      status = absl::InternalError(rd_kafka_event_error_string(ev));
    }
    for (size_t i = 0; i < n; ++i) {
      rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[i]);
      if (err && err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
        status = absl::InternalError(absl::StrCat(
            "create topic ", rd_kafka_topic_result_name(results[i]), ": ",
            rd_kafka_err2str(err)));
      }
    }
    rd_kafka_event_destroy(ev);
  }
  rd_kafka_queue_destroy(queue);
  rd_kafka_NewTopic_destroy_array(news.data(), news.size());
  rd_kafka_destroy(rk);
  return status;
}

}  // namespace outboxd::bench
