#include "pipeline/checkpoint.h"

#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace outboxd {

std::string EncodeCheckpoint(const Checkpoint& checkpoint) {
  nlohmann::ordered_json j = {
      {"outboxd", 1},
      {"source", checkpoint.source},
      {"lsn", absl::StrCat(checkpoint.position.commit_lsn.value())},
      {"index", checkpoint.position.index},
  };
  if (!checkpoint.history.empty()) j["history"] = checkpoint.history;
  if (checkpoint.commit_time_unix_ms > 0) {
    j["time"] = checkpoint.commit_time_unix_ms;
  }
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::StatusOr<Checkpoint> DecodeCheckpoint(absl::string_view metadata) {
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat("not an outboxd checkpoint (", why,
                                            "): '", metadata.substr(0, 200),
                                            "'"));
  };
  nlohmann::json j =
      nlohmann::json::parse(metadata.begin(), metadata.end(), nullptr,
                            /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  auto version = j.find("outboxd");
  if (version == j.end() || !version->is_number_integer() ||
      version->get<int64_t>() != 1) {
    return bad("version");
  }
  auto source = j.find("source");
  auto lsn = j.find("lsn");
  auto index = j.find("index");
  if (source == j.end() || !source->is_string()) return bad("source");
  uint64_t lsn_value = 0;
  if (lsn == j.end() || !lsn->is_string() ||
      !absl::SimpleAtoi(lsn->get<std::string>(), &lsn_value)) {
    return bad("lsn");
  }
  if (index == j.end() || !index->is_number_unsigned() ||
      index->get<uint64_t>() > std::numeric_limits<uint32_t>::max()) {
    return bad("index");
  }
  auto history = j.find("history");
  if (history != j.end() && !history->is_string()) return bad("history");
  auto time = j.find("time");
  if (time != j.end() && !time->is_number_integer()) return bad("time");
  Checkpoint c;
  if (time != j.end()) c.commit_time_unix_ms = time->get<int64_t>();
  if (history != j.end()) c.history = history->get<std::string>();
  c.source = source->get<std::string>();
  c.position.commit_lsn = Lsn(lsn_value);
  c.position.index = static_cast<uint32_t>(index->get<uint64_t>());
  return c;
}

absl::StatusOr<std::optional<Checkpoint>> NewestCheckpoint(
    const std::vector<CommittedOffset>& offsets, const std::string& source,
    const std::string& group, const std::string& history,
    size_t* other_histories) {
  std::optional<Checkpoint> newest;
  for (const CommittedOffset& o : offsets) {
    absl::StatusOr<Checkpoint> c = DecodeCheckpoint(o.metadata);
    if (!c.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "consumer group ", group, " (", o.topic, "[", o.partition,
          "]) holds an offset that is not this source's checkpoint: ",
          c.status().message(),
          "; the group must belong to this outboxd alone (give it its own "
          "--transactional-id)"));
    }
    if (c->source != source) {
      return absl::FailedPreconditionError(absl::StrCat(
          "consumer group ", group, " holds the checkpoint of source ",
          c->source, ", not of ", source,
          ": two sources share a transactional id; give each its own "
          "--transactional-id"));
    }
    if (c->history != history) {
      if (other_histories != nullptr) ++*other_histories;
      continue;
    }
    // The last one written: its transaction committed last (a WAL that
    // went back on the same timeline reuses the positions of a checkpoint
    // the database no longer has), then the highest position.
    if (!newest.has_value() ||
        std::tie(c->commit_time_unix_ms, c->position) >
            std::tie(newest->commit_time_unix_ms, newest->position)) {
      newest = *std::move(c);
    }
  }
  return newest;
}

int64_t CheckpointOffset(const EventPosition& position) {
  uint64_t lsn = position.commit_lsn.value();
  constexpr uint64_t kMax =
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  return static_cast<int64_t>(lsn > kMax ? kMax : lsn);
}

}  // namespace outboxd
