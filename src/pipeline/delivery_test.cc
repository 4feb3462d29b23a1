// The two delivery modes (pipeline/delivery.h) against FakeSink: what is
// acknowledged when, what is skipped, and what stops the run.
#include "pipeline/delivery.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pipeline/checkpoint.h"
#include "tests/fakes/fake_sink.h"

namespace outboxd {
namespace {

using ::outboxd::testing::FakeSink;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class RecordingHost : public DeliveryHost {
 public:
  void Acknowledge(uint64_t sequence) override { acked.push_back(sequence); }
  void Fail(uint64_t sequence, absl::Status cause) override {
    failed.emplace_back(sequence, std::move(cause));
  }
  absl::Status KeepSourcesAlive() override {
    ++keep_alives;
    return keep_alive_status;
  }
  std::vector<uint64_t> acked;
  std::vector<std::pair<uint64_t, absl::Status>> failed;
  int keep_alives = 0;
  absl::Status keep_alive_status;
};

EventPosition At(uint64_t lsn, uint32_t index = 0) {
  return EventPosition{Lsn(lsn), index};
}

KafkaRecord Record(const std::string& topic = "t") {
  KafkaRecord r;
  r.topic = topic;
  r.key = "k";
  r.value = absl::string_view("v");
  return r;
}

class DeliveryTest : public ::testing::Test {
 protected:
  // A sink whose reports reach `delivery`.
  void MakeSink(Delivery& delivery) {
    sink_ =
        std::make_unique<FakeSink>([&delivery](uint64_t seq, absl::Status s) {
          delivery.OnReport(seq, std::move(s));
        });
    delivery.Attach(*sink_);
  }
  // Produces one record of `sequence` at `position` as the Publisher does.
  void Produce(Delivery& delivery, uint64_t sequence, EventPosition position,
               int64_t commit_time_ms = 0) {
    ASSERT_TRUE(delivery.BeforeProduce().ok());
    ASSERT_TRUE(sink_->Produce(Record(), sequence).ok());
    delivery.Produced(sequence, {position, commit_time_ms}, "t");
  }

  RecordingHost host_;
  std::unique_ptr<FakeSink> sink_;
};

// --- at-least-once
// ------------------------------------------------------------

TEST_F(DeliveryTest, AtLeastOnceAcknowledgesEachRecordByItsOwnReport) {
  auto d = NewAtLeastOnceDelivery(host_);
  MakeSink(*d);
  sink_->fail_delivery = [](const testing::FakeRecord& r) {
    return r.sequence == 2 ? absl::UnavailableError("broker down")
                           : absl::OkStatus();
  };
  for (uint64_t s = 1; s <= 3; ++s) Produce(*d, s, At(100, s));
  EXPECT_THAT(host_.acked, IsEmpty());  // nothing before its report
  sink_->Poll(absl::ZeroDuration());
  EXPECT_THAT(host_.acked, ElementsAre(1, 3));
  ASSERT_EQ(host_.failed.size(), 1u);
  EXPECT_EQ(host_.failed[0].first, 2u);
  EXPECT_TRUE(d->Check().ok());  // a failed event is the tracker's matter
}

TEST_F(DeliveryTest, AtLeastOnceNeverSkipsNorCommits) {
  auto d = NewAtLeastOnceDelivery(host_);
  MakeSink(*d);
  EXPECT_FALSE(d->Skips({At(1)}));
  EXPECT_FALSE(d->CommitDue(absl::InfiniteFuture(), true));
  EXPECT_TRUE(d->CheckSources(20).ok());
  EXPECT_TRUE(d->IsolatesSources());
  EXPECT_TRUE(d->ReplacesFailedSink());
  EXPECT_FALSE(d->SinkNeedsIdentity());
  EXPECT_EQ(d->Producer(ProducerOptions{}, "id").transactional_id, "");
}

TEST_F(DeliveryTest, AtLeastOnceStopsOnAFatalProducer) {
  auto d = NewAtLeastOnceDelivery(host_);
  MakeSink(*d);
  sink_->SetFatal(absl::InternalError("fatal: out of order sequence"));
  EXPECT_THAT(d->Check().message(), HasSubstr("out of order"));
}

TEST_F(DeliveryTest, AtLeastOnceCleanFinishWaitsForReportsKeepingSourcesAlive) {
  auto d = NewAtLeastOnceDelivery(host_);
  MakeSink(*d);
  sink_->hold_acks = true;
  Produce(*d, 1, At(100));
  // Held: the finish gives up at its deadline without acknowledging.
  EXPECT_TRUE(d->Finish(true, absl::Now() + absl::Milliseconds(120)).ok());
  EXPECT_THAT(host_.acked, IsEmpty());
  EXPECT_GE(host_.keep_alives, 1);
  sink_->Release();
  EXPECT_TRUE(d->Finish(true, absl::Now() + absl::Seconds(5)).ok());
  EXPECT_THAT(host_.acked, ElementsAre(1));
}

// --- exactly-once
// -------------------------------------------------------------

class TransactionalTest : public DeliveryTest {
 protected:
  static constexpr char kIdentity[] = "7001/shop/outbox_slot";
  static constexpr char kGroup[] = "outboxd-7001-shop-outbox_slot";

  std::unique_ptr<Delivery> Make(TransactionalOptions o = {}) {
    auto d = NewTransactionalDelivery(o, host_);
    producer_ = d->Producer(ProducerOptions{}, kIdentity);
    MakeSink(*d);
    return d;
  }
  absl::Status Ready(Delivery& d, absl::Status history = absl::OkStatus(),
                     const std::string& timeline = "1") {
    return d.Ready(kIdentity, timeline,
                   [history](const EventPosition&) { return history; });
  }
  void SeedCheckpoint(EventPosition p, std::string source = kIdentity,
                      std::string timeline = "1", std::string topic = "t",
                      int64_t commit_time_ms = 0) {
    CommittedOffset c;
    c.topic = std::move(topic);
    c.offset = CheckpointOffset(p);
    c.metadata = EncodeCheckpoint(
        Checkpoint{std::move(source), p, std::move(timeline), commit_time_ms});
    sink_->checkpoints[kGroup].push_back(c);
  }

  ProducerOptions producer_;
};

TEST_F(TransactionalTest, TheTransactionalIdIsTheSourcesUnlessGiven) {
  auto d = Make();
  EXPECT_EQ(producer_.transactional_id, kGroup);
  EXPECT_TRUE(d->SinkNeedsIdentity());
  TransactionalOptions o;
  o.transactional_id = "mine";
  auto given = NewTransactionalDelivery(o, host_);
  EXPECT_EQ(given->Producer(ProducerOptions{}, kIdentity).transactional_id,
            "mine");
}

TEST_F(TransactionalTest, OneSourceOnlyAndNoIsolation) {
  auto d = Make();
  EXPECT_TRUE(d->CheckSources(1).ok());
  EXPECT_EQ(d->CheckSources(2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(d->IsolatesSources());
  EXPECT_FALSE(d->ReplacesFailedSink());  // fatal = fenced
}

TEST_F(TransactionalTest, RefusesTheDevBroker) {
  auto d = Make();
  sink_->cluster_id = "mockCluster1234";
  absl::Status s = Ready(*d);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("needs Apache Kafka"));
}

TEST_F(TransactionalTest, EventsAreAcknowledgedOnlyWhenTheTransactionCommits) {
  auto d = Make();
  ASSERT_TRUE(Ready(*d).ok());
  Produce(*d, 1, At(100, 0));
  Produce(*d, 2, At(100, 1));
  sink_->Poll(absl::ZeroDuration());
  EXPECT_THAT(host_.acked, IsEmpty());  // written, not committed
  ASSERT_TRUE(d->Commit(absl::InfiniteFuture()).ok());
  EXPECT_THAT(host_.acked, ElementsAre(1, 2));
  EXPECT_EQ(sink_->committed().size(), 2u);
  // The checkpoint committed with it is the last event's position.
  ASSERT_EQ(sink_->checkpoints[kGroup].size(), 1u);
  auto c = DecodeCheckpoint(sink_->checkpoints[kGroup][0].metadata);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->source, kIdentity);
  EXPECT_EQ(c->position, At(100, 1));
  // Resent events at or below it are now in Kafka.
  EXPECT_TRUE(d->Skips({At(100, 1)}));
  EXPECT_FALSE(d->Skips({At(100, 2)}));
}

TEST_F(TransactionalTest, SkipsOnlyAtOrBelowTheCheckpointItRead) {
  auto d = Make();
  SeedCheckpoint(At(500, 3));
  ASSERT_TRUE(Ready(*d).ok());
  EXPECT_TRUE(d->Skips({At(400, 9)}));
  EXPECT_TRUE(d->Skips({At(500, 3)}));
  EXPECT_FALSE(d->Skips({At(500, 4)}));
  EXPECT_FALSE(d->Skips({At(600, 0)}));
  PipelineStats stats;
  d->AddStats(stats);
  EXPECT_EQ(stats.events_skipped, 2u);
}

// A restore on the same timeline whose WAL has passed the checkpoint's
// position again (seen after a process restart, so the timeline and the
// position say nothing): the first event at or below the checkpoint that
// committed after the checkpoint's own transaction is not skipped, and the
// checkpoint is never used to skip again.
TEST_F(TransactionalTest, AnEventCommittedAfterTheCheckpointIsNeverSkipped) {
  constexpr int64_t kCheckpointTime = 1700000000000;
  auto d = Make();
  SeedCheckpoint(At(500, 3), kIdentity, "1", "t", kCheckpointTime);
  ASSERT_TRUE(Ready(*d).ok());
  // The same history: resent events committed before, or a few ms after
  // (commit times follow positions only roughly).
  EXPECT_TRUE(d->Skips({At(400, 0), kCheckpointTime - 5000}));
  EXPECT_TRUE(d->Skips({At(450, 0), kCheckpointTime + 3}));
  // Another history: committed a minute after the checkpoint's transaction.
  EXPECT_FALSE(d->Skips({At(480, 0), kCheckpointTime + 60000}));
  EXPECT_FALSE(d->Skips({At(490, 0), kCheckpointTime - 5000}));
  // The checkpoint a commit writes carries its last event's time.
  Produce(*d, 1, At(600), kCheckpointTime + 90000);
  ASSERT_TRUE(d->Commit(absl::InfiniteFuture()).ok());
  ASSERT_FALSE(sink_->checkpoints[kGroup].empty());
  auto c = DecodeCheckpoint(sink_->checkpoints[kGroup].back().metadata);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->position, At(600));
  EXPECT_EQ(c->commit_time_unix_ms, kCheckpointTime + 90000);
}

// A checkpoint past the database's WAL (a restore): of a history the
// database no longer has, never used to skip, and publishing goes on.
TEST_F(TransactionalTest, ACheckpointPastTheWalIsNotUsedAndPublishingGoesOn) {
  auto d = Make();
  SeedCheckpoint(At(500));
  ASSERT_TRUE(
      Ready(*d, absl::FailedPreconditionError("past the database's WAL")).ok());
  EXPECT_FALSE(d->Skips({At(1)}));  // never used to skip
  EXPECT_FALSE(d->Skips({At(500)}));
}

// The check could not be made (the database did not answer): retried.
TEST_F(TransactionalTest, ACheckpointThatCannotBeCheckedIsNotUsedYet) {
  auto d = Make();
  SeedCheckpoint(At(500));
  absl::Status s = Ready(*d, absl::UnavailableError("connection refused"));
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_FALSE(d->Skips({At(1)}));
}

// A failover or restore to a server whose WAL went back: the checkpoint of
// the old timeline is never used to skip the new timeline's events, which
// reuse its positions.
TEST_F(TransactionalTest, ACheckpointOfAnotherTimelineIsNotUsedToSkip) {
  auto d = Make();
  SeedCheckpoint(At(500, 3), kIdentity, "1", "a");
  SeedCheckpoint(At(300, 0), kIdentity, "2", "b");
  ASSERT_TRUE(Ready(*d, absl::OkStatus(), "2").ok());
  EXPECT_TRUE(d->Skips({At(300, 0)}));
  EXPECT_FALSE(d->Skips({At(300, 1)}));
  EXPECT_FALSE(d->Skips({At(400, 0)}));
}

// A checkpoint written without a history (an older outboxd) proves nothing
// about a source that has one.
TEST_F(TransactionalTest, ACheckpointWithoutHistoryIsNotUsedToSkip) {
  auto d = Make();
  SeedCheckpoint(At(500, 3), kIdentity, "");
  ASSERT_TRUE(Ready(*d).ok());
  EXPECT_FALSE(d->Skips({At(400, 0)}));
}

// During a run: the source starts over at a new position (a new slot, a
// server whose WAL is behind), or reconnects in another timeline; the
// checkpoint in memory stops skipping.
TEST_F(TransactionalTest, ARestartedSourceForgetsTheCheckpointInMemory) {
  auto d = Make();
  SeedCheckpoint(At(500, 3));
  ASSERT_TRUE(Ready(*d).ok());
  EXPECT_TRUE(d->Skips({At(400, 0)}));
  d->SourceRestarted();
  EXPECT_FALSE(d->Skips({At(400, 0)}));
  // What it commits afterwards is the new stream's checkpoint.
  Produce(*d, 1, At(420));
  sink_->Poll(absl::ZeroDuration());
  ASSERT_TRUE(d->Commit(absl::InfiniteFuture()).ok());
  EXPECT_TRUE(d->Skips({At(420)}));
  EXPECT_FALSE(d->Skips({At(421)}));
}

TEST_F(TransactionalTest, AReconnectInAnotherTimelineForgetsTheCheckpoint) {
  auto d = Make();
  SeedCheckpoint(At(500, 3));
  ASSERT_TRUE(Ready(*d).ok());
  ASSERT_TRUE(Ready(*d).ok());  // the same timeline: kept
  EXPECT_TRUE(d->Skips({At(400, 0)}));
  ASSERT_TRUE(Ready(*d, absl::OkStatus(), "2").ok());
  EXPECT_FALSE(d->Skips({At(400, 0)}));
  Produce(*d, 1, At(420));
  sink_->Poll(absl::ZeroDuration());
  ASSERT_TRUE(d->Commit(absl::InfiniteFuture()).ok());
  auto c = DecodeCheckpoint(sink_->checkpoints[kGroup].back().metadata);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->history, "2");
}

TEST_F(TransactionalTest, ACheckpointOfAnotherSourceIsRefused) {
  auto d = Make();
  SeedCheckpoint(At(500), "9999/other/slot");
  EXPECT_EQ(Ready(*d).code(), absl::StatusCode::kFailedPrecondition);
}

// A cause that may pass (a leader or coordinator away): the transaction is
// aborted and its events are to be resent (a rewind), a few times in a
// row at most; a record refused for good stops the run at once.
TEST_F(TransactionalTest, AFailedDeliveryAbortsAndRewindsAFewTimes) {
  auto d = Make();
  ASSERT_TRUE(Ready(*d).ok());
  sink_->fail_delivery = [](const testing::FakeRecord&) {
    return absl::DeadlineExceededError("Local: Message timed out");
  };
  for (int attempt = 1; attempt <= 5; ++attempt) {
    Produce(*d, attempt, At(100));
    sink_->Poll(absl::ZeroDuration());
    EXPECT_TRUE(d->failed());
    absl::Status s = d->Check();
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << attempt;
    EXPECT_THAT(s.message(), HasSubstr("resending its events"));
    EXPECT_TRUE(d->TakeRewind());
    EXPECT_FALSE(d->TakeRewind());  // once
    EXPECT_FALSE(d->failed());
    EXPECT_EQ(sink_->transactions_aborted(), attempt);
  }
  Produce(*d, 6, At(100));
  sink_->Poll(absl::ZeroDuration());
  EXPECT_EQ(d->Check().code(), absl::StatusCode::kAborted);  // the sixth
  EXPECT_FALSE(d->TakeRewind());
  EXPECT_THAT(host_.acked, IsEmpty());
  EXPECT_TRUE(sink_->committed().empty());
}

TEST_F(TransactionalTest, ACommitResetsTheAbortsInARow) {
  auto d = Make();
  ASSERT_TRUE(Ready(*d).ok());
  bool failing = true;
  sink_->fail_delivery = [&failing](const testing::FakeRecord&) {
    return failing ? absl::DeadlineExceededError("timed out")
                   : absl::OkStatus();
  };
  for (int round = 0; round < 3; ++round) {
    for (int attempt = 0; attempt < 4; ++attempt) {
      failing = true;
      Produce(*d, 1, At(100 + round));
      sink_->Poll(absl::ZeroDuration());
      ASSERT_EQ(d->Check().code(), absl::StatusCode::kUnavailable);
      ASSERT_TRUE(d->TakeRewind());
    }
    failing = false;
    Produce(*d, 1, At(100 + round));
    ASSERT_TRUE(d->Commit(absl::InfiniteFuture()).ok());
  }
  EXPECT_EQ(sink_->transactions_committed(), 3);
}

TEST_F(TransactionalTest, ARecordRefusedForGoodStopsTheRun) {
  auto d = Make();
  ASSERT_TRUE(Ready(*d).ok());
  sink_->fail_delivery = [](const testing::FakeRecord&) {
    return MarkPermanentRefusal(
        absl::InvalidArgumentError("MSG_SIZE_TOO_LARGE"));
  };
  Produce(*d, 1, At(100));
  sink_->Poll(absl::ZeroDuration());
  EXPECT_TRUE(d->failed());
  absl::Status s = d->Check();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(s.message(), HasSubstr("refuses this record for good"));
  EXPECT_FALSE(d->TakeRewind());
  EXPECT_EQ(sink_->transactions_aborted(), 1);
  EXPECT_THAT(host_.acked, IsEmpty());
  EXPECT_TRUE(sink_->committed().empty());
}

TEST_F(TransactionalTest, AFencedProducerStopsWithoutCommitting) {
  auto d = Make();
  ASSERT_TRUE(Ready(*d).ok());
  Produce(*d, 1, At(100));
  sink_->SetFatal(absl::AbortedError("PRODUCER_FENCED"));
  absl::Status s = d->Check();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(s.message(), HasSubstr("has probably taken over"));
  EXPECT_THAT(host_.acked, IsEmpty());
}

TEST_F(TransactionalTest, ACleanFinishCommitsWhatWasProduced) {
  auto d = Make();
  ASSERT_TRUE(Ready(*d).ok());
  Produce(*d, 1, At(100));
  ASSERT_TRUE(d->Finish(true, absl::Now() + absl::Seconds(5)).ok());
  EXPECT_THAT(host_.acked, ElementsAre(1));
  PipelineStats stats;
  d->AddStats(stats);
  EXPECT_EQ(stats.transactions_committed, 1u);
}

TEST_F(TransactionalTest, AFinishAfterAFailureAbortsTheOpenTransaction) {
  auto d = Make();
  ASSERT_TRUE(Ready(*d).ok());
  Produce(*d, 1, At(100));
  ASSERT_TRUE(d->Finish(false, absl::Now() + absl::Seconds(5)).ok());
  EXPECT_EQ(sink_->transactions_aborted(), 1);
  EXPECT_THAT(host_.acked, IsEmpty());
}

TEST_F(TransactionalTest, ACommitIsDueAtABoundaryOnceOldEnough) {
  TransactionalOptions o;
  o.batch.interval = absl::Milliseconds(100);
  auto d = Make(o);
  ASSERT_TRUE(Ready(*d).ok());
  Produce(*d, 1, At(100));
  const absl::Time later = absl::Now() + absl::Seconds(1);
  EXPECT_TRUE(d->CommitDue(later, /*at_boundary=*/true));
  EXPECT_FALSE(d->CommitDue(later, /*at_boundary=*/false));
  EXPECT_LT(d->Deadline(), absl::InfiniteFuture());
}

}  // namespace
}  // namespace outboxd
