#include "kafka/topic_catalog.h"

#include <map>
#include <string>

#include "gtest/gtest.h"

namespace outboxd {
namespace {

// A broker whose answers the test sets, and a clock the test moves.
struct FakeBroker {
  std::map<std::string, absl::StatusOr<TopicState>> topics;
  std::map<std::string, int> asked;
  absl::Time now = absl::FromUnixSeconds(1000);

  TopicCatalog Catalog() {
    return TopicCatalog(
        [this](const std::string& t) -> absl::StatusOr<TopicState> {
          ++asked[t];
          auto it = topics.find(t);
          if (it == topics.end()) return TopicState::kMissing;
          return it->second;
        },
        TopicCatalogOptions{.recheck_missing = absl::Seconds(30),
                            .confirm_missing_after = absl::Seconds(1),
                            .retry_after_failure = absl::Seconds(1)},
        [this] { return now; });
  }
};

TEST(TopicCatalogTest, ExistingTopicIsLookedUpOnce) {
  FakeBroker broker;
  broker.topics["t"] = TopicState::kExists;
  TopicCatalog catalog = broker.Catalog();
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(catalog.Check("t").ok());
  broker.now += absl::Hours(1);
  EXPECT_TRUE(catalog.Check("t").ok());
  EXPECT_EQ(broker.asked["t"], 1);
}

TEST(TopicCatalogTest, MissingTopicIsNotFoundAndRecheckedLater) {
  FakeBroker broker;
  TopicCatalog catalog = broker.Catalog();
  // One answer is not enough: the metadata may lag a fresh topic.
  absl::Status s = catalog.Check("gone");
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  broker.now += absl::Milliseconds(500);
  EXPECT_TRUE(absl::IsUnavailable(catalog.Check("gone")));
  EXPECT_EQ(broker.asked["gone"], 1);
  broker.now += absl::Milliseconds(500);
  s = catalog.Check("gone");
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  EXPECT_NE(s.message().find("does not exist"), absl::string_view::npos);
  EXPECT_EQ(broker.asked["gone"], 2);
  broker.now += absl::Seconds(29);
  EXPECT_TRUE(absl::IsNotFound(catalog.Check("gone")));
  EXPECT_EQ(broker.asked["gone"], 2);  // cached meanwhile
  // Created later: found at the next lookup.
  broker.topics["gone"] = TopicState::kExists;
  broker.now += absl::Seconds(2);
  EXPECT_TRUE(catalog.Check("gone").ok());
  EXPECT_EQ(broker.asked["gone"], 3);
}

TEST(TopicCatalogTest, TopicThatAppearsWhileConfirmingIsNotMissing) {
  FakeBroker broker;
  TopicCatalog catalog = broker.Catalog();
  EXPECT_TRUE(absl::IsUnavailable(catalog.Check("fresh")));
  broker.topics["fresh"] = TopicState::kExists;
  broker.now += absl::Seconds(1);
  EXPECT_TRUE(catalog.Check("fresh").ok());
  // And a later disappearance starts a new confirmation.
  EXPECT_TRUE(catalog.Check("fresh").ok());
}

TEST(TopicCatalogTest, IllegalNameIsRefusedWithoutAskingTheBroker) {
  FakeBroker broker;
  broker.topics["a b"] = TopicState::kExists;  // the dev broker accepts it
  TopicCatalog catalog = broker.Catalog();
  absl::Status s = catalog.Check("a b");
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_TRUE(absl::IsInvalidArgument(catalog.Check(std::string(250, 'x'))));
  EXPECT_EQ(catalog.lookups(), 0);
}

TEST(TopicCatalogTest, NameTheBrokerRefusesIsInvalid) {
  FakeBroker broker;
  broker.topics["t"] = TopicState::kIllegal;
  TopicCatalog catalog = broker.Catalog();
  EXPECT_TRUE(absl::IsInvalidArgument(catalog.Check("t")));
}

TEST(TopicCatalogTest, FailedLookupIsUnavailableNeverMissing) {
  FakeBroker broker;
  broker.topics["t"] = absl::UnavailableError("all brokers down");
  TopicCatalog catalog = broker.Catalog();
  absl::Status s = catalog.Check("t");
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_NE(s.message().find("all brokers down"), absl::string_view::npos);
  // No second lookup within retry_after_failure, for any topic.
  EXPECT_TRUE(absl::IsUnavailable(catalog.Check("t")));
  EXPECT_TRUE(absl::IsUnavailable(catalog.Check("u")));
  EXPECT_EQ(catalog.lookups(), 1);
  // The broker is back: the answer is the real one.
  broker.topics["t"] = TopicState::kExists;
  broker.now += absl::Seconds(1);
  EXPECT_TRUE(catalog.Check("t").ok());
  EXPECT_EQ(catalog.lookups(), 2);
}

}  // namespace
}  // namespace outboxd
