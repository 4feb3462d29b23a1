#include "benchmarks/multidb_readback.h"

#include <unistd.h>

#include <algorithm>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "benchmarks/bench_env.h"
#include "benchmarks/bench_kafka.h"
#include "benchmarks/bench_pg.h"

namespace outboxd::bench::multidb {

absl::StatusOr<std::unique_ptr<ReadBack>> ReadBack::Start(
    const std::string& bootstrap, std::vector<std::string> topics,
    std::vector<std::string> dbs, std::vector<Phase> phases) {
  std::unique_ptr<ReadBack> r(new ReadBack());
  r->topics_ = std::move(topics);
  r->next_.assign(r->topics_.size(), std::vector<int64_t>(kPartitions, 0));
  r->dbs_ = std::move(dbs);
  r->phases_ = std::move(phases);
  int64_t end = 0;
  for (const Phase& p : r->phases_) end = std::max(end, p.first + p.count);
  r->seen_.assign(end, 0);
  auto rk = NewKafkaHandle(
      RD_KAFKA_CONSUMER,
      {{"bootstrap.servers", bootstrap},
       {"group.id",
        absl::StrCat("multidb-readback-", getpid(), "-", r->topics_[0])},
       {"enable.auto.commit", "false"},
       {"enable.auto.offset.store", "false"},
       // An offset the broker no longer holds: on from the oldest it
       // holds, which counts as a gap.
       {"auto.offset.reset", "earliest"},
       {"fetch.wait.max.ms", "10"}});
  if (!rk.ok()) return rk.status();
  r->rk_ = *rk;
  rd_kafka_topic_partition_list_t* parts =
      rd_kafka_topic_partition_list_new(kPartitions * r->topics_.size());
  for (const std::string& topic : r->topics_) {
    for (int p = 0; p < kPartitions; ++p) {
      rd_kafka_topic_partition_list_add(parts, topic.c_str(), p)->offset =
          RD_KAFKA_OFFSET_BEGINNING;
    }
  }
  rd_kafka_resp_err_t err = rd_kafka_assign(r->rk_, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
    return absl::UnavailableError(
        absl::StrCat("assign: ", rd_kafka_err2str(err)));
  }
  r->thread_ = std::thread([p = r.get()] { p->Loop(); });
  return r;
}

ReadBack::~ReadBack() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  if (rk_ != nullptr) {
    rd_kafka_consumer_close(rk_);
    rd_kafka_destroy(rk_);
  }
}

bool ReadBack::CatchUp(absl::Duration timeout) {
  std::vector<std::vector<int64_t>> high(topics_.size(),
                                         std::vector<int64_t>(kPartitions, 0));
  for (size_t t = 0; t < topics_.size(); ++t) {
    for (int p = 0; p < kPartitions; ++p) {
      int64_t lo = 0;
      if (rd_kafka_query_watermark_offsets(rk_, topics_[t].c_str(), p, &lo,
                                           &high[t][p], 10000) !=
          RD_KAFKA_RESP_ERR_NO_ERROR) {
        return false;
      }
    }
  }
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    bool all = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t t = 0; t < topics_.size(); ++t) {
        for (int p = 0; p < kPartitions; ++p) all &= next_[t][p] >= high[t][p];
      }
    }
    if (all) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

nlohmann::json ReadBack::Result() {
  std::lock_guard<std::mutex> lock(mu_);
  const int ndb = static_cast<int>(dbs_.size());
  nlohmann::json phases = nlohmann::json::array();
  for (const Phase& ph : phases_) {
    std::vector<int64_t> lost(ndb, 0), dups(ndb, 0);
    int64_t lost_total = 0, dups_total = 0;
    for (int64_t id = ph.first; id < ph.first + ph.count; ++id) {
      const int d = static_cast<int>((id - ph.first) % ndb);
      if (seen_[id] == 0) ++lost[d], ++lost_total;
      if (seen_[id] > 1) dups[d] += seen_[id] - 1, dups_total += seen_[id] - 1;
    }
    phases.push_back({{"written", ph.count},
                      {"lost", lost_total},
                      {"duplicates", dups_total},
                      {"lost_per_database", lost},
                      {"duplicates_per_database", dups}});
  }
  return {{"records_read", records_},      {"offset_gaps", gaps_},
          {"warmups", warmups_},           {"unknown_ids", unknown_},
          {"wrong_source", wrong_source_}, {"phases", phases}};
}

int ReadBack::DatabaseOf(int64_t id) const {
  for (const Phase& ph : phases_) {
    if (id >= ph.first && id < ph.first + ph.count) {
      return static_cast<int>((id - ph.first) %
                              static_cast<int64_t>(dbs_.size()));
    }
  }
  return -1;
}

void ReadBack::Loop() {
  while (!stop_) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 100);
    if (m == nullptr) continue;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) Count(*m);
    rd_kafka_message_destroy(m);
  }
}

void ReadBack::Count(const rd_kafka_message_t& m) {
  const int64_t id = ParseBenchId(static_cast<const char*>(m.payload),
                                  m.payload == nullptr ? 0 : m.len);
  std::string source;
  rd_kafka_headers_t* headers = nullptr;
  const void* value = nullptr;
  size_t size = 0;
  if (rd_kafka_message_headers(&m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR &&
      rd_kafka_header_get_last(headers, "outbox.source", &value, &size) ==
          RD_KAFKA_RESP_ERR_NO_ERROR) {
    source.assign(static_cast<const char*>(value), size);
  }
  const std::string topic = rd_kafka_topic_name(m.rkt);
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t t = 0; t < topics_.size(); ++t) {
    if (topics_[t] != topic || m.partition < 0 || m.partition >= kPartitions) {
      continue;
    }
    std::vector<int64_t>& next = next_[t];
    if (m.offset > next[m.partition]) gaps_ += m.offset - next[m.partition];
    next[m.partition] = m.offset + 1;
  }
  ++records_;
  if (id < 0) {
    ++warmups_;
    return;
  }
  const int d = DatabaseOf(id);
  if (d < 0) {
    ++unknown_;
    return;
  }
  ++seen_[id];
  if (source.find(absl::StrCat("/", dbs_[d], "/")) == std::string::npos &&
      ++wrong_source_ <= 3) {
    std::cerr << "event " << id << " of " << dbs_[d] << " has outbox.source '"
              << source << "'\n";
  }
}

}  // namespace outboxd::bench::multidb
