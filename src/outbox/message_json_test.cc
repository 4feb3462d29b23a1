#include "outbox/message_json.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "outbox/router.h"
#include "outbox/row_to_event.h"

namespace outboxd {
namespace {

using Json = nlohmann::ordered_json;

// What nlohmann makes of `text`: its compact dump, nullopt when it does not
// parse. The reference the fast path must match.
std::optional<std::string> NlohmannDump(const std::string& text) {
  Json doc = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return std::nullopt;
  return doc.dump();
}

// The event ParseMessageEvent's nlohmann path makes of `content`, written
// out independently of it: nullopt when the content is not a valid event.
std::optional<OutboxEvent> ReferenceEvent(const std::string& content) {
  Json doc = Json::parse(content, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return std::nullopt;
  OutboxEvent e;
  for (auto [name, target] : {std::pair<const char*, std::string*>{"id", &e.id},
                              {"aggregatetype", &e.aggregate_type},
                              {"aggregateid", &e.aggregate_id},
                              {"type", &e.type}}) {
    auto it = doc.find(name);
    if (it == doc.end() || !it->is_string()) return std::nullopt;
    *target = it->get<std::string>();
  }
  auto payload = doc.find("payload");
  if (payload != doc.end() && !payload->is_null()) e.payload = payload->dump();
  auto headers = doc.find("headers");
  if (headers != doc.end() && !headers->is_null()) {
    if (!headers->is_object()) return std::nullopt;
    for (const auto& [k, v] : headers->items()) {
      if (!v.is_string()) return std::nullopt;
      if (IsReservedHeader(k)) {
        e.dropped_headers.push_back(k);
      } else {
        e.headers.emplace_back(k, v.get<std::string>());
      }
    }
  }
  auto deps = doc.find("depends_on");
  if (deps != doc.end() && !deps->is_null()) {
    if (!deps->is_array()) return std::nullopt;
    for (const auto& d : *deps) {
      if (!d.is_string() || d.get<std::string>().empty()) return std::nullopt;
      e.depends_on.push_back(d.get<std::string>());
    }
  }
  return e;
}

void ExpectSameEvent(const OutboxEvent& got, const OutboxEvent& want,
                     const std::string& content) {
  SCOPED_TRACE(content);
  EXPECT_EQ(got.id, want.id);
  EXPECT_EQ(got.aggregate_type, want.aggregate_type);
  EXPECT_EQ(got.aggregate_id, want.aggregate_id);
  EXPECT_EQ(got.type, want.type);
  EXPECT_EQ(got.payload, want.payload);
  EXPECT_EQ(got.headers, want.headers);
  EXPECT_EQ(got.dropped_headers, want.dropped_headers);
  EXPECT_EQ(got.depends_on, want.depends_on);
}

// Checks the fast path against nlohmann for one text: when it accepts, its
// result is nlohmann's. Returns whether it accepted.
bool CheckCompact(const std::string& text) {
  std::string out = "prefix";
  const bool accepted = AppendCompactJson(text, &out);
  std::optional<std::string> want = NlohmannDump(text);
  if (accepted) {
    EXPECT_TRUE(want.has_value()) << "accepted what nlohmann rejects: " << text;
    if (want.has_value()) {
      EXPECT_EQ(out, "prefix" + *want) << text;
    }
  } else {
    EXPECT_EQ(out, "prefix") << "changed *out although it gave up: " << text;
  }
  return accepted;
}

bool CheckEvent(const std::string& content) {
  OutboxEvent got;
  const bool accepted = FastParseMessageEvent(content, &got);
  std::optional<OutboxEvent> want = ReferenceEvent(content);
  if (accepted) {
    EXPECT_TRUE(want.has_value()) << "accepted an invalid event: " << content;
    if (want.has_value()) ExpectSameEvent(got, *want, content);
  } else {
    ExpectSameEvent(got, OutboxEvent(), content);  // untouched
  }
  return accepted;
}

// The headers ParseHeadersText's nlohmann path makes of `text`, written out
// independently of it; nullopt when the text is not valid headers.
std::optional<OutboxEvent> ReferenceHeaders(const std::string& text) {
  Json doc = Json::parse(text, nullptr, false);
  if (doc.is_discarded()) return std::nullopt;
  OutboxEvent e;
  if (doc.is_null()) return e;
  if (!doc.is_object()) return std::nullopt;
  for (const auto& [k, v] : doc.items()) {
    if (!v.is_string()) return std::nullopt;
    if (IsReservedHeader(k)) {
      e.dropped_headers.push_back(k);
    } else {
      e.headers.emplace_back(k, v.get<std::string>());
    }
  }
  return e;
}

bool CheckHeaders(const std::string& text) {
  OutboxEvent got;
  const bool accepted = FastParseHeadersText(text, &got);
  std::optional<OutboxEvent> want = ReferenceHeaders(text);
  if (accepted) {
    EXPECT_TRUE(want.has_value()) << "accepted invalid headers: " << text;
    if (want.has_value()) ExpectSameEvent(got, *want, text);
  } else {
    ExpectSameEvent(got, OutboxEvent(), text);  // untouched
  }
  return accepted;
}

TEST(FastParseHeadersTextTest, MatchesNlohmann) {
  for (const std::string& text : std::vector<std::string>{
           "null", " {} ", R"({"traceparent": "00-ab", "tenant": "t\u00e9"})",
           R"({"id": "x", "outbox.lsn": "1", "eventType": "E", "a": ""})"}) {
    EXPECT_TRUE(CheckHeaders(text)) << text;
  }
  for (const std::string& text : std::vector<std::string>{
           "", "[]", "1", R"("x")", R"({"a": 1})", R"({"a": "1", "a": "2"})",
           R"({"a": "1"} x)", R"({"a": "1",})", "{"}) {
    EXPECT_FALSE(CheckHeaders(text)) << text;
  }
  OutboxEvent e;
  ASSERT_TRUE(FastParseHeadersText(R"({"b": "2", "outbox.x": "y"})", &e));
  ASSERT_TRUE(FastParseHeadersText(R"({"b": "3"})", &e));  // appends
  EXPECT_THAT(e.headers, testing::ElementsAre(
                             std::pair<std::string, std::string>{"b", "2"},
                             std::pair<std::string, std::string>{"b", "3"}));
  EXPECT_THAT(e.dropped_headers, testing::ElementsAre("outbox.x"));
}

TEST(AppendCompactJsonTest, WritesWhatNlohmannDumps) {
  for (const std::string& text : std::vector<std::string>{
           "{}", "[]", " { } ", "0", "-12", "123456789012345678", "true",
           "false", "null", "\"\"", "\"a b\"",
           R"({"a": 1, "b": [true, false, null], "c": {"d": "e"}})",
           "{\n\t\"x\" :\r\n [ 1 , 2 ] }",
           R"("tab\there \"q\" back\\slash \/ \b\f\n\r")",
           R"("\u00e9\u0001\u001F\u007f\u2028\ud83d\ude00")",
           "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \x7f\"",
           R"({"nested": [[[[{"deep": []}]]]]})"}) {
    EXPECT_TRUE(CheckCompact(text)) << text;
  }
}

TEST(AppendCompactJsonTest, GivesUpWhereNlohmannWritesItsOwnForm) {
  for (const std::string& text :
       std::vector<std::string>{"1.5", "1e3", "-0", "12345678901234567890",
                                R"({"a":1,"a":2})", R"({"k\u0061":1})"}) {
    EXPECT_FALSE(CheckCompact(text)) << text;
  }
}

TEST(AppendCompactJsonTest, GivesUpOnMalformedText) {
  for (const std::string& text : std::vector<std::string>{
           "",
           " ",
           "{",
           "}",
           "[1,]",
           "{\"a\":}",
           "{\"a\" 1}",
           "01",
           "-",
           "tru",
           "nul",
           "truex",
           "\"unterminated",
           "\"raw\ncontrol\"",
           R"("\x")",
           R"("\u12")",
           R"("\ud800")",
           R"("\udc00")",
           R"("\ud800\u0041")",
           "\"\xc0\xaf\"",
           "\"\xed\xa0\x80\"",
           "\"\xf4\x90\x80\x80\"",
           "\"\xe2\x82\"",
           "\xef\xbb\xbf{}",
           "{} {}",
           "[1 2]",
           std::string(100, '[') + std::string(100, ']')}) {
    EXPECT_FALSE(CheckCompact(text)) << text;
  }
}

TEST(FastParseMessageEventTest, ReadsTheEventsFields) {
  OutboxEvent e;
  e.headers.emplace_back("already", "there");
  ASSERT_TRUE(FastParseMessageEvent(
      R"({"id": "e-1", "aggregatetype": "order", "aggregateid": "o\"1",
          "type": "Created", "payload": {"total": 12, "items": [1, 2]},
          "headers": {"traceparent": "00-ab", "outbox.lsn": "9", "id": "x"},
          "depends_on": ["e-0", "e-\u00e9"], "extra": [1.5, {"x": null}]})",
      &e));
  EXPECT_EQ(e.id, "e-1");
  EXPECT_EQ(e.aggregate_type, "order");
  EXPECT_EQ(e.aggregate_id, "o\"1");
  EXPECT_EQ(e.type, "Created");
  EXPECT_EQ(e.payload, R"({"total":12,"items":[1,2]})");
  EXPECT_THAT(e.headers,
              testing::ElementsAre(
                  std::pair<std::string, std::string>{"already", "there"},
                  std::pair<std::string, std::string>{"traceparent", "00-ab"}));
  EXPECT_THAT(e.dropped_headers, testing::ElementsAre("outbox.lsn", "id"));
  EXPECT_THAT(e.depends_on, testing::ElementsAre("e-0", "e-\xc3\xa9"));
}

TEST(FastParseMessageEventTest, MatchesNlohmannOnHandPickedContent) {
  const std::string base =
      R"("id":"1","aggregatetype":"t","aggregateid":"a","type":"T")";
  for (const std::string& tail : std::vector<std::string>{
           "", R"(,"payload":null)", R"(,"payload":"text")", R"(,"payload":[])",
           R"(,"headers":null)", R"(,"headers":{})", R"(,"depends_on":null)",
           R"(,"depends_on":[])", R"(,"headers":{"a\u0062":"\n"})"}) {
    EXPECT_TRUE(CheckEvent("{" + base + tail + "}")) << tail;
  }
  // Left to the nlohmann path (which decides or reports the error).
  for (const std::string& tail : std::vector<std::string>{
           R"(,"id":"2")", R"(,"payload":1.0)", R"(,"headers":{"a":1})",
           R"(,"headers":[])", R"(,"headers":{"a":"1","a":"2"})",
           R"(,"depends_on":[""])", R"(,"depends_on":"x")",
           R"(,"depends_on":[1])", R"(,"\u0069d":"2")", R"(,"x":01)",
           R"(,"x":1e999)", R"(,"x":1.)", R"(,"x":-)",
           R"(,"payload":{"a":1,"a":2})"}) {
    EXPECT_FALSE(CheckEvent("{" + base + tail + "}")) << tail;
  }
  EXPECT_FALSE(CheckEvent(R"({"id":"1","aggregatetype":"t","type":"T"})"));
  EXPECT_FALSE(CheckEvent(R"({"id":1,"aggregatetype":"t","aggregateid":"a",
                             "type":"T"})"));
  EXPECT_FALSE(CheckEvent("[]"));
  EXPECT_FALSE(CheckEvent("{" + base + "} x"));
}

// Random JSON, random whitespace and random corruption: whenever the fast
// path accepts, it agrees with nlohmann.
class RandomJson {
 public:
  explicit RandomJson(uint32_t seed) : rng_(seed) {}

  int Below(int n) { return static_cast<int>(rng_() % n); }

  std::string Space() {
    static const char* kSpaces[] = {"", "", "", " ", "\n", "\t ", "\r\n  "};
    return kSpaces[Below(7)];
  }

  std::string String() {
    static const std::vector<std::string> kPieces = {"a",
                                                     "Z",
                                                     " ",
                                                     "0",
                                                     "\\\"",
                                                     "\\\\",
                                                     "\\/",
                                                     "\\b",
                                                     "\\f",
                                                     "\\n",
                                                     "\\r",
                                                     "\\t",
                                                     "\\u0000",
                                                     "\\u001f",
                                                     "\\u0041",
                                                     "\\u00e9",
                                                     "\\u20AC",
                                                     "\\ud83d\\ude00",
                                                     "\xc3\xa9",
                                                     "\xe2\x82\xac",
                                                     "\xf0\x9f\x98\x80",
                                                     "\x7f",
                                                     "outbox.",
                                                     "id"};
    std::string s = "\"";
    for (int n = Below(6); n > 0; --n) s += kPieces[Below(kPieces.size())];
    return s + "\"";
  }

  std::string Number() {
    switch (Below(11)) {
      case 8:
        return "1e999";
      case 9:
        return "-0.0";
      case 10:
        return absl::StrCat(rng_() % 100, "E-", rng_() % 10);
      case 0:
        return "0";
      case 1:
        return "-0";
      case 2:
        return absl::StrCat(rng_() % 1000);
      case 3:
        return absl::StrCat("-", 1 + rng_() % 1000);
      case 4:
        return "123456789012345678";
      case 5:
        return "-9223372036854775809";
      case 6:
        return "18446744073709551616";
      default:
        return absl::StrCat(rng_() % 100, ".", rng_() % 100);
    }
  }

  std::string Value(int depth) {
    switch (depth > 3 ? Below(4) : Below(7)) {
      case 0:
        return String();
      case 1:
        return Number();
      case 2:
        return std::vector<std::string>{"true", "false", "null"}[Below(3)];
      case 3:
        return String();
      case 4: {
        std::string s = "[" + Space();
        for (int n = Below(4), i = 0; i < n; ++i) {
          s += (i ? "," : "") + Space() + Value(depth + 1) + Space();
        }
        return s + "]";
      }
      default: {
        std::string s = "{" + Space();
        for (int n = Below(4), i = 0; i < n; ++i) {
          std::string key = Below(4) == 0 ? String() : Key();
          s += (i ? "," : "") + Space() + key + Space() + ":" + Space() +
               Value(depth + 1) + Space();
        }
        return s + "}";
      }
    }
  }

  std::string Key() {
    static const char* kKeys[] = {"\"a\"", "\"b\"", "\"c\"", "\"\"",
                                  "\"k\\u0061\""};
    return kKeys[Below(5)];
  }

  // A headers value: mostly an object of strings.
  std::string Headers() {
    if (Below(15) == 0) return Value(0);
    std::string h = Space() + "{";
    for (int n = Below(4), i = 0; i < n; ++i) {
      static const char* kNames[] = {"\"trace\"", "\"id\"", "\"outbox.x\"",
                                     "\"a\\u0062\"", "\"eventType\""};
      h += (i ? "," : "") + Space() + std::string(kNames[Below(5)]) + Space() +
           ":" + Space() + (Below(15) == 0 ? Value(0) : String()) + Space();
    }
    return h + "}" + Space();
  }

  // An event's content: the fields in random order, sometimes missing,
  // duplicated or of the wrong type.
  std::string Event() {
    std::vector<std::string> members;
    for (const char* f : {"id", "aggregatetype", "aggregateid", "type"}) {
      if (Below(20) == 0) continue;
      members.push_back(absl::StrCat("\"", f, "\":", Space(),
                                     Below(20) == 0 ? Value(0) : String()));
    }
    if (Below(4) != 0) members.push_back("\"payload\":" + Value(0));
    if (Below(3) != 0) members.push_back("\"headers\":" + Headers());
    if (Below(3) == 0) {
      std::string d = "[";
      for (int n = Below(3), i = 0; i < n; ++i) {
        d += (i ? "," : "") + (Below(15) == 0 ? Value(0) : String());
      }
      members.push_back("\"depends_on\":" +
                        (Below(15) == 0 ? Value(0) : d + "]"));
    }
    if (Below(3) == 0) members.push_back("\"other\":" + Value(0));
    if (Below(30) == 0) members.push_back(members[Below(members.size())]);
    std::shuffle(members.begin(), members.end(), rng_);
    std::string s = Space() + "{";
    for (size_t i = 0; i < members.size(); ++i) {
      s += (i ? "," : "") + Space() + members[i] + Space();
    }
    return s + "}" + Space();
  }

  // Flips, drops or inserts one byte now and then.
  std::string Corrupt(std::string s) {
    if (s.empty() || Below(4) != 0) return s;
    size_t at = rng_() % s.size();
    switch (Below(3)) {
      case 0:
        s[at] = static_cast<char>(rng_());
        break;
      case 1:
        s.erase(at, 1);
        break;
      default:
        s.insert(at, 1, "\"{}[],:\\0a \x80"[Below(12)]);
    }
    return s;
  }

 private:
  std::mt19937 rng_;
};

TEST(AppendCompactJsonTest, AgreesWithNlohmannOnRandomText) {
  RandomJson gen(12345);
  int accepted = 0;
  constexpr int kRounds = 20000;
  for (int i = 0; i < kRounds; ++i) {
    if (CheckCompact(gen.Corrupt(gen.Space() + gen.Value(0) + gen.Space()))) {
      ++accepted;
    }
    if (HasFailure()) return;
  }
  // Not vacuous: most random values are in the subset handled.
  EXPECT_GT(accepted, kRounds / 3);
}

TEST(FastParseMessageEventTest, AgreesWithNlohmannOnRandomContent) {
  RandomJson gen(777);
  int accepted = 0;
  constexpr int kRounds = 20000;
  for (int i = 0; i < kRounds; ++i) {
    if (CheckEvent(gen.Corrupt(gen.Event()))) ++accepted;
    if (HasFailure()) return;
  }
  EXPECT_GT(accepted, kRounds / 5);
}

TEST(FastParseHeadersTextTest, AgreesWithNlohmannOnRandomText) {
  RandomJson gen(4242);
  int accepted = 0;
  constexpr int kRounds = 20000;
  for (int i = 0; i < kRounds; ++i) {
    if (CheckHeaders(gen.Corrupt(gen.Headers()))) ++accepted;
    if (HasFailure()) return;
  }
  EXPECT_GT(accepted, kRounds / 5);
}

// ParseMessageEvent (the fast path, then nlohmann) keeps its errors.
TEST(ParseMessageEventTest, ErrorsStayTheNlohmannPathsErrors) {
  OutboxEvent e;
  EXPECT_EQ(ParseMessageEvent("{", &e).message(),
            "message content is not valid JSON");
  EXPECT_EQ(ParseMessageEvent("[]", &e).message(),
            "message content is not a JSON object");
  OutboxEvent missing;
  EXPECT_EQ(ParseMessageEvent(R"({"id":"1","aggregatetype":"t","type":"T"})",
                              &missing)
                .message(),
            "message field 'aggregateid' is missing or not a string");
  EXPECT_EQ(missing.aggregate_id, "");
}

}  // namespace
}  // namespace outboxd
