#include "consumer/inbox.h"

#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/lsn.h"
#include "common/status_macros.h"
#include "kafka/kafka_status.h"
#include "kafka/producer.h"
#include "nlohmann/json.hpp"
#include "outbox/router.h"
#include "pg/replication_setup.h"
#include "spdlog/spdlog.h"

namespace outboxd {
namespace {

constexpr absl::Duration kProgressLogInterval = absl::Seconds(10);
// How often heads of deferred queues are re-checked when nothing was
// applied in between.
constexpr absl::Duration kDeferredRecheck = absl::Milliseconds(50);
constexpr absl::Duration kDeadLetterTimeout = absl::Seconds(30);
constexpr char kStatusApplied[] = "applied";
constexpr char kStatusDeadLettered[] = "dead-lettered";

// The inbox's consumer defaults, applied before user properties.
constexpr std::pair<const char*, const char*> kConsumerDefaults[] = {
    {"client.id", "outbox-inbox"},
    // Offsets are committed by the inbox after the database commit only.
    {"enable.auto.commit", "false"},
    {"enable.auto.offset.store", "false"},
    // A new group starts from the beginning: no event is skipped.
    {"auto.offset.reset", "earliest"},
    {"enable.partition.eof", "false"},
};

struct TopicPartition {
  std::string topic;
  int32_t partition;
  friend auto operator<=>(const TopicPartition&,
                          const TopicPartition&) = default;
};

std::string TpName(const TopicPartition& tp) {
  return absl::StrCat(tp.topic, "[", tp.partition, "]");
}

// A PostgreSQL text[] literal of `items`, every element quoted.
std::string TextArrayLiteral(const std::vector<std::string>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char c : items[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  out += '}';
  return out;
}

// With an envelope format the event travels inside the value: take the
// payload, id, position and dependencies from it.
void DecodeEnvelope(ValueFormat format, InboxRecord& r) {
  ConsumedRecordView view;
  view.topic = r.topic;
  if (r.key.has_value()) view.key = *r.key;
  if (r.value.has_value()) view.value = absl::string_view(*r.value);
  view.headers = &r.headers;
  view.timestamp_ms = r.timestamp_ms;
  absl::StatusOr<OutboxEvent> event = DecodeRecord(format, view);
  if (!event.ok()) {
    r.decode_status = absl::InvalidArgumentError(
        absl::StrCat("value is not ", ValueFormatName(format), ": ",
                     event.status().message()));
    return;
  }
  r.value = event->payload;
  if (!event->id.empty()) r.event_id = event->id;
  if (event->position.commit_lsn.valid()) {
    r.lsn = event->position.commit_lsn.value();
    r.index = event->position.index;
  }
  if (!event->depends_on.empty()) r.depends_on = event->depends_on;
}

InboxRecord RecordFromMessage(const rd_kafka_message_t* m, ValueFormat format) {
  InboxRecord r;
  r.topic = rd_kafka_topic_name(m->rkt);
  r.partition = m->partition;
  r.offset = m->offset;
  if (m->key != nullptr) {
    r.key.emplace(static_cast<const char*>(m->key), m->key_len);
  }
  if (m->payload != nullptr) {
    r.value.emplace(static_cast<const char*>(m->payload), m->len);
  }
  rd_kafka_timestamp_type_t ts_type;
  r.timestamp_ms = rd_kafka_message_timestamp(m, &ts_type);
  rd_kafka_headers_t* headers = nullptr;
  if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR) {
    const char* name;
    const void* value;
    size_t size;
    for (size_t i = 0;
         rd_kafka_header_get_all(headers, i, &name, &value, &size) ==
         RD_KAFKA_RESP_ERR_NO_ERROR;
         ++i) {
      r.headers.emplace_back(
          name, value != nullptr
                    ? std::string(static_cast<const char*>(value), size)
                    : std::string());
    }
  }
  // One rule for reserved headers: outboxd sets each at most once, so a
  // record carrying one twice (an older outboxd let a headers column forge
  // them) is ambiguous. It is not guessed at: it fails like a bad value
  // (retried, then dead-lettered or stopped, per --on-failure).
  for (size_t i = 0; i < r.headers.size() && r.decode_status.ok(); ++i) {
    const std::string& name = r.headers[i].first;
    if (!IsReservedHeader(name)) continue;
    for (size_t j = i + 1; j < r.headers.size(); ++j) {
      if (r.headers[j].first == name) {
        r.decode_status = absl::InvalidArgumentError(absl::StrCat(
            "reserved header '", name,
            "' appears more than once: which one is outboxd's is ambiguous"));
        break;
      }
    }
  }
  auto id = r.Header(kHeaderId);
  r.event_id = id.has_value() && !id->empty()
                   ? *id
                   : absl::StrCat(r.topic, "/", r.partition, "/", r.offset);
  if (auto deps = r.Header(kHeaderDependsOn); deps.has_value()) {
    for (absl::string_view d : absl::StrSplit(*deps, ',', absl::SkipEmpty())) {
      r.depends_on.emplace_back(d);
    }
  }
  if (auto source = r.Header(kHeaderSource)) r.source = *source;
  uint64_t lsn;
  uint32_t index;
  if (auto h = r.Header(kHeaderLsn); h && absl::SimpleAtoi(*h, &lsn)) {
    r.lsn = lsn;
  }
  if (auto h = r.Header(kHeaderIndex); h && absl::SimpleAtoi(*h, &index)) {
    r.index = index;
  }
  if (format != ValueFormat::kPayload && r.decode_status.ok()) {
    DecodeEnvelope(format, r);
  }
  return r;
}

}  // namespace

std::optional<std::string> InboxRecord::Header(absl::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (n == name) return v;
  }
  return std::nullopt;
}

std::string InboxRecord::HeadersJson() const {
  nlohmann::json object = nlohmann::json::object();
  // The first occurrence of a name, as Header().
  for (const auto& [n, v] : headers) {
    if (!object.contains(n)) object[n] = v;
  }
  return object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::StatusOr<std::string> InboxTablesDdl(const InboxOptions& options) {
  std::string names[3];
  const std::string* given[3] = {
      &options.processed_table, &options.offsets_table, &options.sources_table};
  for (int i = 0; i < 3; ++i) {
    auto q = ParseQualifiedName(*given[i]);
    if (!q.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("table '", *given[i], "': ", q.status().message()));
    }
    names[i] = q->ToString();
  }
  return absl::StrFormat(
      "CREATE TABLE IF NOT EXISTS %s (\n"
      "  consumer_group  text        NOT NULL,\n"
      "  event_id        text        NOT NULL,\n"
      "  status          text        NOT NULL DEFAULT 'applied'\n"
      "                  CHECK (status IN ('applied', 'dead-lettered')),\n"
      "  topic           text        NOT NULL,\n"
      "  kafka_partition integer     NOT NULL,\n"
      "  kafka_offset    bigint      NOT NULL,\n"
      "  source          text,\n"
      "  lsn             pg_lsn,\n"
      "  event_index     integer,\n"
      "  processed_at    timestamptz NOT NULL DEFAULT now(),\n"
      "  PRIMARY KEY (consumer_group, event_id)\n"
      ");\n"
      "CREATE TABLE IF NOT EXISTS %s (\n"
      "  consumer_group  text        NOT NULL,\n"
      "  topic           text        NOT NULL,\n"
      "  kafka_partition integer     NOT NULL,\n"
      "  next_offset     bigint      NOT NULL,\n"
      "  updated_at      timestamptz NOT NULL DEFAULT now(),\n"
      "  PRIMARY KEY (consumer_group, topic, kafka_partition)\n"
      ");\n"
      "CREATE TABLE IF NOT EXISTS %s (\n"
      "  consumer_group  text        NOT NULL,\n"
      "  source          text        NOT NULL,\n"
      "  lsn             pg_lsn      NOT NULL,\n"
      "  event_index     integer     NOT NULL,\n"
      "  updated_at      timestamptz NOT NULL DEFAULT now(),\n"
      "  PRIMARY KEY (consumer_group, source)\n"
      ");\n",
      names[0], names[1], names[2]);
}

struct Inbox::Impl {
  // A record waiting for its dependencies, or queued behind one that is.
  struct Deferred {
    InboxRecord record;
    std::optional<absl::Time> waiting_since;  // set once it is the head
  };
  struct PartitionState {
    std::deque<Deferred> queue;
    bool paused = false;
    int64_t next_expected = -1;  // offset of the next record to take
  };
  enum class Outcome { kApplied, kDuplicate, kHandlerFailed };

  InboxOptions options;
  InboxHandler handler;
  std::unique_ptr<PgConnection> db;
  rd_kafka_t* rk = nullptr;
  std::unique_ptr<KafkaProducer> dlq;
  absl::Status dlq_delivery;
  bool dlq_delivered = false;
  InboxStats stats;
  absl::Status fatal;  // from callbacks (rebalance, error)
  std::map<TopicPartition, PartitionState> partitions;
  std::map<TopicPartition, int64_t> to_commit;  // next offsets, DB-committed
  absl::Time next_kafka_commit = absl::InfinitePast();
  absl::Time next_deferred_check = absl::InfinitePast();
  bool applied_since_check = false;

  // Quoted table names and the statements built from them.
  std::string processed, offsets, sources;
  std::string insert_processed_sql, store_offset_sql, store_source_sql,
      load_offset_sql, dependencies_sql;
  std::map<std::string, std::string> prepared_names_;  // sql -> name

  ~Impl() {
    if (rk != nullptr) {
      rd_kafka_consumer_close(rk);
      rd_kafka_destroy(rk);
    }
  }

  // ---- setup -------------------------------------------------------------

  absl::Status Init() {
    auto q = [](const std::string& name) -> absl::StatusOr<std::string> {
      ASSIGN_OR_RETURN(QualifiedName n, ParseQualifiedName(name));
      return n.ToString();
    };
    ASSIGN_OR_RETURN(processed, q(options.processed_table));
    ASSIGN_OR_RETURN(offsets, q(options.offsets_table));
    ASSIGN_OR_RETURN(sources, q(options.sources_table));
    insert_processed_sql = absl::StrCat(
        "INSERT INTO ", processed,
        " (consumer_group, event_id, status, topic, kafka_partition, "
        "kafka_offset, source, lsn, event_index) VALUES ($1, $2, $3, $4, "
        "$5::integer, $6::bigint, $7, $8::pg_lsn, $9::integer) "
        "ON CONFLICT (consumer_group, event_id) DO NOTHING");
    store_offset_sql = absl::StrCat(
        "INSERT INTO ", offsets,
        " AS cur (consumer_group, topic, kafka_partition, next_offset) "
        "VALUES ($1, $2, $3::integer, $4::bigint) "
        "ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE SET "
        "next_offset = EXCLUDED.next_offset, updated_at = now()");
    store_source_sql =
        absl::StrCat("INSERT INTO ", sources,
                     " AS cur (consumer_group, source, lsn, event_index) "
                     "VALUES ($1, $2, $3::pg_lsn, $4::integer) "
                     "ON CONFLICT (consumer_group, source) DO UPDATE SET "
                     "lsn = EXCLUDED.lsn, event_index = EXCLUDED.event_index, "
                     "updated_at = now() WHERE (cur.lsn, cur.event_index) < "
                     "(EXCLUDED.lsn, EXCLUDED.event_index)");
    load_offset_sql = absl::StrCat(
        "SELECT next_offset FROM ", offsets,
        " WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = "
        "$3::integer");
    dependencies_sql =
        absl::StrCat("SELECT count(DISTINCT event_id) FROM ", processed,
                     " WHERE consumer_group = $1 AND status = 'applied' AND "
                     "event_id = ANY($2::text[])");

    ASSIGN_OR_RETURN(db, PgConnection::Connect(options.conninfo,
                                               PgConnection::Mode::kNormal));
    if (options.create_tables) {
      ASSIGN_OR_RETURN(std::string ddl, InboxTablesDdl(options));
      // Serialised: concurrent CREATE TABLE IF NOT EXISTS can still collide.
      RETURN_IF_ERROR(
          db->Exec(absl::StrCat("BEGIN; SELECT pg_advisory_xact_lock(",
                                "hashtext('outbox-inbox ddl')); ", ddl,
                                "COMMIT"))
              .status());
    }
    RETURN_IF_ERROR(PrepareStatements());
    return CreateConsumer();
  }

  // The per-record statements are prepared once (after the tables exist):
  // parse and plan once, not per event.
  absl::Status PrepareStatements() {
    if (!prepared_names_.empty()) return absl::OkStatus();
    const std::pair<const char*, const std::string*> statements[] = {
        {"inbox_insert_processed", &insert_processed_sql},
        {"inbox_store_offset", &store_offset_sql},
        {"inbox_store_source", &store_source_sql},
        {"inbox_load_offset", &load_offset_sql},
        {"inbox_dependencies", &dependencies_sql},
    };
    for (const auto& [name, sql] : statements) {
      PgResult r(PQprepare(db->raw(), name, sql->c_str(), 0, nullptr));
      if (r == nullptr || PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
        // Missing tables (create_tables off and not created yet) show here.
        return StatusFromPgResult(absl::StrCat("preparing ", name), r.get(),
                                  db->raw());
      }
      prepared_names_[*sql] = name;
    }
    return absl::OkStatus();
  }

  // Runs one of the statements above, prepared.
  absl::StatusOr<PgResult> Exec(
      const std::string& sql,
      const std::vector<std::optional<std::string>>& params) {
    auto it = prepared_names_.find(sql);
    if (it == prepared_names_.end()) return db->ExecParams(sql, params);
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
    PgResult r(PQexecPrepared(db->raw(), it->second.c_str(),
                              static_cast<int>(values.size()), values.data(),
                              nullptr, nullptr, 0));
    ExecStatusType st = r ? PQresultStatus(r.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      return StatusFromPgResult("inbox statement failed", r.get(), db->raw());
    }
    return r;
  }

  absl::Status CreateConsumer() {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char errstr[512];
    auto set = [&](const std::string& k, const std::string& v) {
      if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), errstr,
                            sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        return absl::InvalidArgumentError(
            absl::StrCat("kafka property ", k, ": ", errstr));
      }
      return absl::OkStatus();
    };
    absl::Status s = set("bootstrap.servers", options.brokers);
    if (s.ok()) s = set("group.id", options.group_id);
    for (const auto& [k, v] : kConsumerDefaults) {
      if (s.ok()) s = set(k, v);
    }
    // Liveness after a crash: see InboxOptions::instance_id and
    // session_timeout. Heartbeats at a third of the session timeout (at
    // most librdkafka's 3 s default), so a live member is never dropped.
    const int64_t session_ms =
        absl::ToInt64Milliseconds(options.session_timeout);
    if (s.ok()) s = set("session.timeout.ms", absl::StrCat(session_ms));
    if (s.ok()) {
      s = set("heartbeat.interval.ms",
              absl::StrCat(std::clamp<int64_t>(session_ms / 3, 1, 3000)));
    }
    if (s.ok() && !options.instance_id.empty()) {
      s = set("group.instance.id", options.instance_id);
    }
    for (const auto& [k, v] : options.kafka_properties) {
      if (s.ok()) s = set(k, v);
    }
    if (!s.ok()) {
      rd_kafka_conf_destroy(conf);
      return s;
    }
    rd_kafka_conf_set_opaque(conf, this);
    rd_kafka_conf_set_rebalance_cb(conf, &Impl::OnRebalance);
    rd_kafka_conf_set_error_cb(conf, &Impl::OnError);
    rd_kafka_conf_set_log_cb(conf, &Impl::OnLog);
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
    if (rk == nullptr) {
      rd_kafka_conf_destroy(conf);
      return absl::InvalidArgumentError(
          absl::StrCat("kafka consumer: ", errstr));
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(
        static_cast<int>(options.topics.size()));
    for (const std::string& t : options.topics) {
      rd_kafka_topic_partition_list_add(topics, t.c_str(),
                                        RD_KAFKA_PARTITION_UA);
    }
    rd_kafka_resp_err_t err = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    return KafkaErrorToStatus(err, "subscribe");
  }

  // ---- librdkafka callbacks (on the Run thread, inside consumer_poll) ----

  static void OnRebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t* parts,
                          void* opaque) {
    auto* self = static_cast<Impl*>(opaque);
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      self->OnAssign(parts);
    } else {
      self->OnRevoke(parts);
    }
  }

  // Each partition resumes at the offset stored with the last effect.
  void OnAssign(rd_kafka_topic_partition_list_t* parts) {
    std::vector<std::string> names;
    for (int i = 0; i < parts->cnt; ++i) {
      rd_kafka_topic_partition_t& p = parts->elems[i];
      TopicPartition tp{p.topic, p.partition};
      auto r = Exec(load_offset_sql,
                    {options.group_id, tp.topic, absl::StrCat(tp.partition)});
      int64_t next = RD_KAFKA_OFFSET_INVALID;
      if (!r.ok()) {
        // Kafka's committed offset is never ahead of the database's, and
        // the processed table removes what is replayed; but the database
        // is in trouble: stop.
        if (fatal.ok()) fatal = r.status();
      } else if (PQntuples(r->get()) == 1 &&
                 !absl::SimpleAtoi(PQgetvalue(r->get(), 0, 0), &next)) {
        next = RD_KAFKA_OFFSET_INVALID;
      }
      p.offset = next;
      PartitionState& st = partitions[tp];
      st = PartitionState{};
      st.next_expected = next >= 0 ? next : -1;
      names.push_back(absl::StrCat(
          TpName(tp), "@",
          next >= 0 ? absl::StrCat(next) : std::string("committed")));
    }
    spdlog::info("assigned {} partitions: {}", parts->cnt,
                 absl::StrJoin(names, " "));
    rd_kafka_resp_err_t err = rd_kafka_assign(rk, parts);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR && fatal.ok()) {
      fatal = KafkaErrorToStatus(err, "assign");
    }
  }

  void OnRevoke(rd_kafka_topic_partition_list_t* parts) {
    CommitKafka(/*async=*/false);
    for (int i = 0; i < parts->cnt; ++i) {
      TopicPartition tp{parts->elems[i].topic, parts->elems[i].partition};
      auto it = partitions.find(tp);
      if (it != partitions.end() && !it->second.queue.empty()) {
        spdlog::info(
            "{} revoked with {} deferred records; its next owner "
            "resumes from the stored offset",
            TpName(tp), it->second.queue.size());
      }
      partitions.erase(tp);
    }
    spdlog::info("revoked {} partitions", parts->cnt);
    rd_kafka_assign(rk, nullptr);
  }

  static void OnError(rd_kafka_t* rk, int err, const char* reason,
                      void* opaque) {
    auto* self = static_cast<Impl*>(opaque);
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
      char buf[512];
      rd_kafka_resp_err_t e = rd_kafka_fatal_error(rk, buf, sizeof(buf));
      if (self->fatal.ok()) {
        self->fatal = KafkaErrorToStatus(e, "kafka fatal error", buf);
      }
      return;
    }
    spdlog::warn("kafka: {}: {}",
                 rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)),
                 reason);
  }

  static void OnLog(const rd_kafka_t*, int level, const char* fac,
                    const char* msg) {
    if (level <= 3) {
      spdlog::error("rdkafka {}: {}", fac, msg);
    } else if (level <= 4) {
      spdlog::warn("rdkafka {}: {}", fac, msg);
    } else {
      spdlog::debug("rdkafka {}: {}", fac, msg);
    }
  }

  // ---- the loop ----------------------------------------------------------

  absl::Status Run(const std::atomic<bool>& stop) {
    absl::Time next_progress = absl::Now() + kProgressLogInterval;
    absl::Status result;
    while (!stop.load(std::memory_order_relaxed)) {
      bool any_deferred = false;
      for (const auto& [tp, st] : partitions) {
        if (!st.queue.empty()) any_deferred = true;
      }
      rd_kafka_message_t* m =
          rd_kafka_consumer_poll(rk, any_deferred ? 10 : 100);
      if (!fatal.ok()) {
        if (m != nullptr) rd_kafka_message_destroy(m);
        result = fatal;
        break;
      }
      if (m != nullptr) {
        absl::Status s = OnMessage(m);
        rd_kafka_message_destroy(m);
        if (!s.ok()) {
          result = s;
          break;
        }
      }
      absl::Status s = ServeDeferred(stop);
      if (!s.ok()) {
        result = s;
        break;
      }
      absl::Time now = absl::Now();
      if (now >= next_kafka_commit) {
        CommitKafka(/*async=*/true);
        next_kafka_commit = now + options.kafka_commit_interval;
      }
      if (now >= next_progress) {
        LogProgress();
        next_progress = now + kProgressLogInterval;
      }
    }
    if (result.ok()) CommitKafka(/*async=*/false);
    LogProgress();
    rd_kafka_consumer_close(rk);  // leaves the group (revokes)
    rd_kafka_destroy(rk);
    rk = nullptr;
    return result;
  }

  void LogProgress() {
    size_t deferred = 0;
    for (const auto& [tp, st] : partitions) deferred += st.queue.size();
    spdlog::info(
        "inbox: applied {} duplicates {} dead-lettered {} failed attempts {} "
        "waiting for dependencies {}",
        stats.applied, stats.duplicates, stats.dead_lettered,
        stats.failed_attempts, deferred);
  }

  absl::Status OnMessage(rd_kafka_message_t* m) {
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) return absl::OkStatus();
      if (m->err == RD_KAFKA_RESP_ERR_INVALID_SESSION_TIMEOUT) {
        // The group will never be joined: retrying only hides it.
        return absl::FailedPreconditionError(absl::StrCat(
            "the broker refuses --session-timeout=",
            absl::FormatDuration(options.session_timeout),
            " (outside its group.min.session.timeout.ms .. "
            "group.max.session.timeout.ms, 6s .. 30m by default)"));
      }
      // Informational (e.g. a topic not there yet); librdkafka retries.
      spdlog::warn("kafka consumer: {}: {}", rd_kafka_err2name(m->err),
                   rd_kafka_message_errstr(m));
      return absl::OkStatus();
    }
    InboxRecord record = RecordFromMessage(m, options.value_format);
    TopicPartition tp{record.topic, record.partition};
    auto it = partitions.find(tp);
    if (it == partitions.end()) return absl::OkStatus();  // not ours now
    PartitionState& st = it->second;
    if (st.next_expected >= 0 && record.offset < st.next_expected) {
      return absl::OkStatus();  // already taken (redelivered after resume)
    }
    st.next_expected = record.offset + 1;
    if (!st.queue.empty()) {
      // Order within the partition: behind the record that waits.
      st.queue.push_back(Deferred{std::move(record), std::nullopt});
      if (!st.paused && st.queue.size() >= options.max_deferred_per_partition) {
        SetPaused(tp, st, true);
      }
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(bool ready, DependenciesApplied(record));
    if (!ready) {
      ++stats.deferred;
      spdlog::info("event {} ({}@{}) waits for {}", record.event_id, TpName(tp),
                   record.offset, absl::StrJoin(record.depends_on, ","));
      st.queue.push_back(Deferred{std::move(record), absl::Now()});
      return absl::OkStatus();
    }
    return Apply(record);
  }

  void SetPaused(const TopicPartition& tp, PartitionState& st, bool pause) {
    rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, tp.topic.c_str(), tp.partition);
    if (pause) {
      rd_kafka_pause_partitions(rk, l);
    } else {
      rd_kafka_resume_partitions(rk, l);
    }
    rd_kafka_topic_partition_list_destroy(l);
    st.paused = pause;
    spdlog::info("{} {}", TpName(tp), pause ? "paused" : "resumed");
  }

  absl::Status ServeDeferred(const std::atomic<bool>& stop) {
    absl::Time now = absl::Now();
    if (!applied_since_check && now < next_deferred_check) {
      return absl::OkStatus();
    }
    applied_since_check = false;
    next_deferred_check = now + kDeferredRecheck;
    for (auto& [tp, st] : partitions) {
      while (!st.queue.empty() && !stop.load(std::memory_order_relaxed)) {
        Deferred& head = st.queue.front();
        ASSIGN_OR_RETURN(bool ready, DependenciesApplied(head.record));
        if (!ready) {
          if (!head.waiting_since.has_value()) {
            head.waiting_since = now;
            ++stats.deferred;
          }
          if (now - *head.waiting_since < options.dependency_wait) break;
          std::string why =
              absl::StrCat("dependencies not applied within ",
                           absl::FormatDuration(options.dependency_wait), ": ",
                           absl::StrJoin(head.record.depends_on, ","));
          if (options.on_missing_dependency ==
              MissingDependencyPolicy::kProceed) {
            spdlog::warn("event {}: {}; applying it anyway",
                         head.record.event_id, why);
            ++stats.applied_without_dependencies;
            RETURN_IF_ERROR(Apply(head.record));
          } else {
            RETURN_IF_ERROR(DeadLetter(head.record, why, 0));
          }
        } else {
          RETURN_IF_ERROR(Apply(head.record));
        }
        st.queue.pop_front();
      }
      if (st.paused &&
          st.queue.size() < options.max_deferred_per_partition / 2 + 1) {
        SetPaused(tp, st, false);
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<bool> DependenciesApplied(const InboxRecord& r) {
    if (r.depends_on.empty()) return true;
    std::set<std::string> unique(r.depends_on.begin(), r.depends_on.end());
    ASSIGN_OR_RETURN(PgResult res,
                     Exec(dependencies_sql,
                          {options.group_id,
                           TextArrayLiteral({unique.begin(), unique.end()})}));
    size_t n = 0;
    if (PQntuples(res.get()) != 1 ||
        !absl::SimpleAtoi(PQgetvalue(res.get(), 0, 0), &n)) {
      return absl::InternalError("dependency query returned no count");
    }
    return n == unique.size();
  }

  // ---- applying a record ------------------------------------------------

  // Retries handler failures with backoff; then dead-letters (or stops).
  absl::Status Apply(const InboxRecord& r) {
    absl::Duration backoff = options.retry_backoff;
    absl::Status last;
    for (int attempt = 1; attempt <= options.max_attempts; ++attempt) {
      absl::Status handler_error;
      ASSIGN_OR_RETURN(Outcome outcome, ApplyOnce(r, &handler_error));
      if (outcome == Outcome::kApplied) {
        ++stats.applied;
        applied_since_check = true;
        return absl::OkStatus();
      }
      if (outcome == Outcome::kDuplicate) {
        ++stats.duplicates;
        spdlog::info("duplicate event {} at {}[{}]@{} skipped", r.event_id,
                     r.topic, r.partition, r.offset);
        return absl::OkStatus();
      }
      ++stats.failed_attempts;
      last = handler_error;
      spdlog::warn("event {} at {}[{}]@{}: attempt {}/{} failed: {}",
                   r.event_id, r.topic, r.partition, r.offset, attempt,
                   options.max_attempts, handler_error.ToString());
      if (attempt < options.max_attempts) {
        absl::SleepFor(backoff);
        backoff = std::min(backoff * 2, options.max_retry_backoff);
      }
    }
    if (options.on_failure == FailurePolicy::kStop) {
      return absl::FailedPreconditionError(absl::StrCat(
          "event ", r.event_id, " at ", r.topic, "[", r.partition, "]@",
          r.offset, " failed ", options.max_attempts,
          " times (stopping, offset not committed): ", last.message()));
    }
    return DeadLetter(r, std::string(last.message()), options.max_attempts);
  }

  void RollbackQuietly() {
    if (PQtransactionStatus(db->raw()) != PQTRANS_IDLE) {
      db->Exec("ROLLBACK").IgnoreError();
    }
  }

  absl::Status StoreOffset(const InboxRecord& r) {
    RETURN_IF_ERROR(Exec(store_offset_sql,
                         {options.group_id, r.topic, absl::StrCat(r.partition),
                          absl::StrCat(r.offset + 1)})
                        .status());
    return absl::OkStatus();
  }

  absl::Status Commit() {
    ASSIGN_OR_RETURN(PgResult res, db->Exec("COMMIT"));
    // COMMIT of a failed transaction "succeeds" as ROLLBACK.
    if (absl::string_view(PQcmdStatus(res.get())) != "COMMIT") {
      return absl::AbortedError("transaction rolled back at COMMIT");
    }
    return absl::OkStatus();
  }

  // One attempt in one transaction. Errors returned are the inbox's own
  // (database); the handler's is in *handler_error with kHandlerFailed.
  absl::StatusOr<Outcome> ApplyOnce(const InboxRecord& r,
                                    absl::Status* handler_error) {
    absl::StatusOr<Outcome> out = ApplyOnceInTransaction(r, handler_error);
    if (!out.ok() || *out == Outcome::kHandlerFailed) RollbackQuietly();
    if (out.ok() && *out != Outcome::kHandlerFailed) {
      to_commit[{r.topic, r.partition}] = r.offset + 1;
    }
    return out;
  }

  absl::StatusOr<Outcome> ApplyOnceInTransaction(const InboxRecord& r,
                                                 absl::Status* handler_error) {
    RETURN_IF_ERROR(db->Exec("BEGIN").status());
    ASSIGN_OR_RETURN(PgResult ins, InsertProcessed(r, kStatusApplied));
    const bool fresh = absl::string_view(PQcmdTuples(ins.get())) == "1";
    if (fresh) {
      absl::Status hs =
          r.decode_status.ok() ? handler(*db, r) : r.decode_status;
      if (hs.ok() && PQtransactionStatus(db->raw()) == PQTRANS_INERROR) {
        hs = absl::InternalError(
            "the handler left the transaction failed (an error it ignored)");
      }
      if (!hs.ok()) {
        if (PQstatus(db->raw()) != CONNECTION_OK) {
          return absl::UnavailableError(
              absl::StrCat("database connection lost: ", hs.message()));
        }
        *handler_error = std::move(hs);
        return Outcome::kHandlerFailed;
      }
      if (!r.source.empty() && r.lsn.has_value() && r.index.has_value()) {
        RETURN_IF_ERROR(Exec(store_source_sql,
                             {options.group_id, r.source,
                              Lsn(*r.lsn).ToString(), absl::StrCat(*r.index)})
                            .status());
      }
    }
    RETURN_IF_ERROR(StoreOffset(r));
    absl::Status committed = Commit();
    if (!committed.ok()) {
      // With the connection still up, a COMMIT that fails after the handler
      // ran failed because of the handler's changes: a deferred constraint
      // or constraint trigger, a serialization failure. It is the
      // handler's failure (retried, then dead-lettered or stopped), not the
      // inbox's own: stopping would wedge on this record at every start.
      // The inbox's own statements have no deferred checks. A lost
      // connection stays the inbox's failure.
      if (fresh && PQstatus(db->raw()) == CONNECTION_OK) {
        *handler_error = absl::Status(
            committed.code(),
            absl::StrCat("COMMIT failed (deferred check of the handler's "
                         "changes): ",
                         committed.message()));
        return Outcome::kHandlerFailed;
      }
      if (PQstatus(db->raw()) != CONNECTION_OK) {
        return absl::UnavailableError(absl::StrCat(
            "database connection lost at COMMIT: ", committed.message()));
      }
      return committed;
    }
    return fresh ? Outcome::kApplied : Outcome::kDuplicate;
  }

  absl::StatusOr<PgResult> InsertProcessed(const InboxRecord& r,
                                           const char* status) {
    std::optional<std::string> source, lsn, index;
    if (!r.source.empty()) source = r.source;
    if (r.lsn.has_value()) lsn = Lsn(*r.lsn).ToString();
    if (r.index.has_value()) index = absl::StrCat(*r.index);
    return Exec(insert_processed_sql,
                {options.group_id, r.event_id, std::string(status), r.topic,
                 absl::StrCat(r.partition), absl::StrCat(r.offset), source, lsn,
                 index});
  }

  // ---- dead letters -----------------------------------------------------

  absl::Status DeadLetter(const InboxRecord& r, const std::string& error,
                          int attempts) {
    if (dlq == nullptr) {
      ProducerOptions po;
      po.brokers = options.brokers;
      // Consumer-only properties would only produce warnings here.
      for (const auto& kv : options.kafka_properties) {
        if (kv.first.rfind("bootstrap", 0) == 0 ||
            kv.first.rfind("security", 0) == 0 ||
            kv.first.rfind("sasl", 0) == 0 || kv.first.rfind("ssl", 0) == 0) {
          po.properties.push_back(kv);
        }
      }
      po.properties.emplace_back("client.id", "outbox-inbox-dlq");
      ASSIGN_OR_RETURN(
          dlq, KafkaProducer::Create(po, [this](uint64_t, absl::Status s) {
            dlq_delivered = true;
            dlq_delivery = std::move(s);
          }));
    }
    KafkaRecord k;
    k.topic = options.dlq_topic;
    if (r.key.has_value()) k.key = *r.key;
    if (r.value.has_value()) k.value = absl::string_view(*r.value);
    k.timestamp_ms = r.timestamp_ms;
    k.headers = r.headers;
    k.headers.emplace_back("inbox.error", error);
    k.headers.emplace_back("inbox.attempts", absl::StrCat(attempts));
    k.headers.emplace_back("inbox.topic", r.topic);
    k.headers.emplace_back("inbox.partition", absl::StrCat(r.partition));
    k.headers.emplace_back("inbox.offset", absl::StrCat(r.offset));
    k.headers.emplace_back("inbox.group", options.group_id);
    dlq_delivered = false;
    absl::Time deadline = absl::Now() + kDeadLetterTimeout;
    absl::Status s;
    while (absl::IsResourceExhausted(s = dlq->Produce(k, 0)) &&
           absl::Now() < deadline) {
      dlq->Poll(absl::Milliseconds(50));
    }
    RETURN_IF_ERROR(s);
    while (!dlq_delivered && absl::Now() < deadline) {
      dlq->Poll(absl::Milliseconds(50));
    }
    if (!dlq_delivered) {
      return absl::UnavailableError(
          absl::StrCat("dead-lettering to ", options.dlq_topic, " timed out"));
    }
    RETURN_IF_ERROR(dlq_delivery);
    // Marked handled, so the group moves on; a crash before this commit
    // dead-letters it again (at-least-once to the dead-letter topic).
    absl::Status db_status = [&]() -> absl::Status {
      RETURN_IF_ERROR(db->Exec("BEGIN").status());
      RETURN_IF_ERROR(InsertProcessed(r, kStatusDeadLettered).status());
      RETURN_IF_ERROR(StoreOffset(r));
      return Commit();
    }();
    if (!db_status.ok()) {
      RollbackQuietly();
      return db_status;
    }
    to_commit[{r.topic, r.partition}] = r.offset + 1;
    ++stats.dead_lettered;
    applied_since_check = true;
    spdlog::warn("event {} at {}[{}]@{} dead-lettered to {}: {}", r.event_id,
                 r.topic, r.partition, r.offset, options.dlq_topic, error);
    return absl::OkStatus();
  }

  // ---- Kafka offsets (after the database commit, informational) ---------

  void CommitKafka(bool async) {
    if (to_commit.empty() || rk == nullptr) return;
    rd_kafka_topic_partition_list_t* l =
        rd_kafka_topic_partition_list_new(static_cast<int>(to_commit.size()));
    for (const auto& [tp, next] : to_commit) {
      rd_kafka_topic_partition_list_add(l, tp.topic.c_str(), tp.partition)
          ->offset = next;
    }
    rd_kafka_resp_err_t err = rd_kafka_commit(rk, l, async ? 1 : 0);
    rd_kafka_topic_partition_list_destroy(l);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      // The database holds the offsets that count; Kafka's are for tools.
      spdlog::debug("kafka offset commit: {}", rd_kafka_err2name(err));
    }
    to_commit.clear();
  }
};

absl::StatusOr<std::unique_ptr<Inbox>> Inbox::Create(InboxOptions options,
                                                     InboxHandler handler) {
  if (options.conninfo.empty() || options.brokers.empty() ||
      options.group_id.empty() || options.topics.empty()) {
    return absl::InvalidArgumentError(
        "inbox needs a conninfo, brokers, a group id and topics");
  }
  if (!handler) return absl::InvalidArgumentError("inbox needs a handler");
  if (options.max_attempts < 1) {
    return absl::InvalidArgumentError("max_attempts must be at least 1");
  }
  if (options.dlq_topic.empty()) {
    return absl::InvalidArgumentError("dlq_topic must not be empty");
  }
  if (options.max_deferred_per_partition < 1) {
    options.max_deferred_per_partition = 1;
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->handler = std::move(handler);
  RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Inbox>(new Inbox(std::move(impl)));
}

Inbox::Inbox(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Inbox::~Inbox() = default;

absl::Status Inbox::Run(const std::atomic<bool>& stop) {
  if (impl_->rk == nullptr) {
    return absl::FailedPreconditionError("Inbox::Run called twice");
  }
  return impl_->Run(stop);
}

const InboxStats& Inbox::stats() const { return impl_->stats; }

}  // namespace outboxd
