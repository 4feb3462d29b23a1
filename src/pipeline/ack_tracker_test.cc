#include "pipeline/ack_tracker.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

// Registers a committed transaction with `events` events; returns their
// sequence numbers.
std::vector<uint64_t> AddCommitted(AckTracker& tracker, int events,
                                   uint64_t end_lsn) {
  std::vector<uint64_t> sequences;
  tracker.BeginTransaction();
  for (int i = 0; i < events; ++i) sequences.push_back(tracker.AddEvent());
  tracker.CommitTransaction(Lsn(end_lsn));
  return sequences;
}

TEST(AckTrackerTest, AbandonedTransactionConfirmsNothing) {
  AckTracker tracker(Lsn(100));
  auto first = AddCommitted(tracker, 1, 200);
  tracker.BeginTransaction();
  uint64_t half = tracker.AddEvent();
  // A keepalive while the transaction streams: its walEnd lies past it.
  tracker.ObserveIdlePosition(Lsn(900));
  tracker.AbandonOpenTransaction();  // the connection was lost
  tracker.Acknowledge(first[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(200));
  tracker.Acknowledge(half);
  EXPECT_EQ(tracker.Confirmable(), Lsn(200))
      << "neither the abandoned transaction nor the old walEnd confirms";
  EXPECT_EQ(tracker.EventsInFlight(), 0u);
  // The server resends it on the new connection.
  auto again = AddCommitted(tracker, 2, 500);
  tracker.Acknowledge(again[0]);
  tracker.Acknowledge(again[1]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(500));
  tracker.ObserveIdlePosition(Lsn(600));
  EXPECT_EQ(tracker.Confirmable(), Lsn(600));
}

TEST(AckTrackerTest, AbandonWithoutOpenTransactionOnlyForgetsWalEnd) {
  AckTracker tracker(Lsn(100));
  auto seq = AddCommitted(tracker, 1, 300);
  tracker.ObserveIdlePosition(Lsn(400));
  tracker.AbandonOpenTransaction();
  tracker.Acknowledge(seq[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(300));
}

// A stream that starts over (a new slot) while events of the old one are
// still in flight: their late reports are not taken for the new events'.
TEST(AckTrackerTest, StartOverKeepsLateReportsOffTheNewEvents) {
  AckTracker old_stream(Lsn(100));
  std::vector<uint64_t> in_flight = AddCommitted(old_stream, 2, 200);
  AckTracker tracker = old_stream.StartOver(Lsn(500));
  EXPECT_EQ(tracker.Confirmable(), Lsn(500));
  std::vector<uint64_t> fresh = AddCommitted(tracker, 2, 600);
  EXPECT_GT(fresh.front(), in_flight.back());
  for (uint64_t seq : in_flight) tracker.Acknowledge(seq);  // late
  EXPECT_EQ(tracker.Confirmable(), Lsn(500));
  EXPECT_EQ(tracker.EventsInFlight(), 2u);
  for (uint64_t seq : fresh) tracker.Acknowledge(seq);
  EXPECT_EQ(tracker.Confirmable(), Lsn(600));
}

TEST(AckTrackerTest, StartsAtStartPosition) {
  AckTracker tracker(Lsn(100));
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  EXPECT_EQ(tracker.EventsInFlight(), 0u);
  EXPECT_TRUE(tracker.failure().ok());
}

TEST(AckTrackerTest, SequencesAreConsecutiveAcrossTransactions) {
  AckTracker tracker;
  EXPECT_EQ(AddCommitted(tracker, 2, 10), (std::vector<uint64_t>{0, 1}));
  AddCommitted(tracker, 0, 20);
  EXPECT_EQ(AddCommitted(tracker, 3, 30), (std::vector<uint64_t>{2, 3, 4}));
  EXPECT_EQ(tracker.EventsInFlight(), 5u);
}

TEST(AckTrackerTest, ConfirmsTransactionOnlyWhenAllEventsAcked) {
  AckTracker tracker(Lsn(100));
  auto seq = AddCommitted(tracker, 3, 200);
  tracker.Acknowledge(seq[0]);
  tracker.Acknowledge(seq[2]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  EXPECT_EQ(tracker.EventsInFlight(), 1u);
  tracker.Acknowledge(seq[1]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(200));
  EXPECT_EQ(tracker.EventsInFlight(), 0u);
}

TEST(AckTrackerTest, AcksBeforeCommitConfirmAtCommit) {
  AckTracker tracker(Lsn(100));
  tracker.BeginTransaction();
  uint64_t a = tracker.AddEvent();
  uint64_t b = tracker.AddEvent();
  tracker.Acknowledge(a);
  tracker.Acknowledge(b);
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  tracker.CommitTransaction(Lsn(300));
  EXPECT_EQ(tracker.Confirmable(), Lsn(300));
}

TEST(AckTrackerTest, LaterTransactionAckedFirstWaitsForEarlierOne) {
  AckTracker tracker(Lsn(100));
  auto tx1 = AddCommitted(tracker, 2, 200);
  auto tx2 = AddCommitted(tracker, 2, 300);
  tracker.Acknowledge(tx2[1]);
  tracker.Acknowledge(tx2[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  tracker.Acknowledge(tx1[1]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  tracker.Acknowledge(tx1[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(300));
}

TEST(AckTrackerTest, StopsAtFirstIncompleteTransaction) {
  AckTracker tracker(Lsn(100));
  auto tx1 = AddCommitted(tracker, 1, 200);
  auto tx2 = AddCommitted(tracker, 1, 300);
  auto tx3 = AddCommitted(tracker, 1, 400);
  tracker.Acknowledge(tx1[0]);
  tracker.Acknowledge(tx3[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(200));
  tracker.Acknowledge(tx2[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(400));
}

TEST(AckTrackerTest, FailedDeliveryIsNeverPassed) {
  AckTracker tracker(Lsn(100));
  auto tx1 = AddCommitted(tracker, 1, 200);
  auto tx2 = AddCommitted(tracker, 2, 300);
  auto tx3 = AddCommitted(tracker, 1, 400);
  tracker.Fail(tx2[0], absl::UnavailableError("broker down"));
  EXPECT_EQ(tracker.failure().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(tracker.EventsInFlight(), 3u);

  tracker.Acknowledge(tx2[1]);
  tracker.Acknowledge(tx3[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  // Everything before the failed transaction may still be confirmed.
  tracker.Acknowledge(tx1[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(200));
  EXPECT_EQ(tracker.EventsInFlight(), 0u);

  // Nothing later moves it: more transactions, acks, server positions.
  auto tx4 = AddCommitted(tracker, 1, 500);
  tracker.Acknowledge(tx4[0]);
  tracker.ObserveIdlePosition(Lsn(900));
  AddCommitted(tracker, 0, 1000);
  EXPECT_EQ(tracker.Confirmable(), Lsn(200));
  EXPECT_EQ(tracker.failure().code(), absl::StatusCode::kUnavailable);
}

TEST(AckTrackerTest, FirstFailureIsKept) {
  AckTracker tracker;
  auto tx = AddCommitted(tracker, 2, 200);
  tracker.Fail(tx[0], absl::UnavailableError("first"));
  tracker.Fail(tx[1], absl::InternalError("second"));
  EXPECT_EQ(tracker.failure(), absl::UnavailableError("first"));
}

TEST(AckTrackerTest, DuplicateAndUnknownReportsDoNotConfirmEarly) {
  AckTracker tracker(Lsn(100));
  auto tx1 = AddCommitted(tracker, 2, 200);
  tracker.Acknowledge(tx1[0]);
  tracker.Acknowledge(tx1[0]);  // duplicate: must not count for tx1[1]
  tracker.Acknowledge(12345);   // never handed out
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  EXPECT_EQ(tracker.EventsInFlight(), 1u);
  tracker.Acknowledge(tx1[1]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(200));
  tracker.Acknowledge(tx1[1]);  // already confirmed
  EXPECT_EQ(tracker.Confirmable(), Lsn(200));
  EXPECT_EQ(tracker.EventsInFlight(), 0u);
}

TEST(AckTrackerTest, EmptyTransactionsConfirmWhenEverythingBeforeIs) {
  AckTracker tracker(Lsn(100));
  AddCommitted(tracker, 0, 150);
  EXPECT_EQ(tracker.Confirmable(), Lsn(150));

  auto tx1 = AddCommitted(tracker, 1, 200);
  AddCommitted(tracker, 0, 250);
  AddCommitted(tracker, 0, 260);
  auto tx4 = AddCommitted(tracker, 1, 300);
  AddCommitted(tracker, 0, 350);
  EXPECT_EQ(tracker.Confirmable(), Lsn(150));
  tracker.Acknowledge(tx4[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(150));
  tracker.Acknowledge(tx1[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(350));
}

TEST(AckTrackerTest, EmptyTransactionsBetweenEventsKeepLookupsRight) {
  // Empty transactions share first_sequence with their successor; the
  // lookup must still find the transaction that holds each event.
  AckTracker tracker(Lsn(1));
  auto tx1 = AddCommitted(tracker, 2, 10);
  AddCommitted(tracker, 0, 20);
  AddCommitted(tracker, 0, 30);
  auto tx4 = AddCommitted(tracker, 2, 40);
  tracker.Acknowledge(tx4[0]);
  tracker.Acknowledge(tx4[1]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(1));
  tracker.Acknowledge(tx1[1]);
  tracker.Acknowledge(tx1[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(40));
}

TEST(AckTrackerTest, IdleAdvancesToServerWalEnd) {
  AckTracker tracker(Lsn(100));
  tracker.ObserveIdlePosition(Lsn(500));
  EXPECT_EQ(tracker.Confirmable(), Lsn(500));
  tracker.ObserveIdlePosition(Lsn(400));  // never backwards
  EXPECT_EQ(tracker.Confirmable(), Lsn(500));
  tracker.ObserveIdlePosition(Lsn(600));
  EXPECT_EQ(tracker.Confirmable(), Lsn(600));
}

TEST(AckTrackerTest, NoIdleAdvanceWhileTransactionOpen) {
  AckTracker tracker(Lsn(100));
  tracker.BeginTransaction();
  tracker.ObserveIdlePosition(Lsn(500));
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  uint64_t seq = tracker.AddEvent();
  tracker.Acknowledge(seq);
  tracker.ObserveIdlePosition(Lsn(550));
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  tracker.CommitTransaction(Lsn(700));
  EXPECT_EQ(tracker.Confirmable(), Lsn(700));
  tracker.ObserveIdlePosition(Lsn(800));
  EXPECT_EQ(tracker.Confirmable(), Lsn(800));
}

TEST(AckTrackerTest, NoIdleAdvanceWhileEventsInFlight) {
  AckTracker tracker(Lsn(100));
  auto tx1 = AddCommitted(tracker, 1, 200);
  tracker.ObserveIdlePosition(Lsn(500));
  EXPECT_EQ(tracker.Confirmable(), Lsn(100));
  tracker.Acknowledge(tx1[0]);
  // Now idle: everything the server sent before 500 is acknowledged.
  EXPECT_EQ(tracker.Confirmable(), Lsn(500));
}

TEST(AckTrackerTest, IdleAdvanceDoesNotPassAnOpenTransactionAfterAck) {
  AckTracker tracker(Lsn(100));
  auto tx1 = AddCommitted(tracker, 1, 200);
  tracker.ObserveIdlePosition(Lsn(500));
  tracker.BeginTransaction();
  tracker.AddEvent();
  tracker.Acknowledge(tx1[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(200));
}

TEST(AckTrackerTest, NeverMovesBackwards) {
  AckTracker tracker(Lsn(1000));
  // A transaction ending before the start position (e.g. resent after a
  // restart) must not pull the position back.
  auto tx = AddCommitted(tracker, 1, 500);
  tracker.Acknowledge(tx[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(1000));
  tracker.ObserveIdlePosition(Lsn(900));
  EXPECT_EQ(tracker.Confirmable(), Lsn(1000));
  tracker.ObserveIdlePosition(Lsn(2000));
  auto tx2 = AddCommitted(tracker, 1, 1500);
  tracker.Acknowledge(tx2[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(2000));
}

TEST(AckTrackerTest, HugeTransactionConfirmsOnlyAtTheEnd) {
  constexpr int kEvents = 200000;
  AckTracker tracker(Lsn(100));
  auto before = AddCommitted(tracker, 1, 150);
  auto huge = AddCommitted(tracker, kEvents, 5000);
  auto after = AddCommitted(tracker, 1, 6000);
  tracker.Acknowledge(before[0]);
  tracker.Acknowledge(after[0]);
  EXPECT_EQ(tracker.Confirmable(), Lsn(150));

  std::mt19937_64 rng(7);
  std::shuffle(huge.begin(), huge.end(), rng);
  for (int i = 0; i < kEvents - 1; ++i) {
    tracker.Acknowledge(huge[i]);
    if (i % 10007 == 0) {
      ASSERT_EQ(tracker.Confirmable(), Lsn(150)) << i;
    }
  }
  EXPECT_EQ(tracker.Confirmable(), Lsn(150));
  EXPECT_EQ(tracker.EventsInFlight(), 1u);
  tracker.Acknowledge(huge.back());
  EXPECT_EQ(tracker.Confirmable(), Lsn(6000));
  EXPECT_EQ(tracker.EventsInFlight(), 0u);
}

// The confirmed-position rule (docs/ARCHITECTURE.md), written the slow and
// obvious way.
class ReferenceTracker {
 public:
  explicit ReferenceTracker(uint64_t start) : confirmed_(start) {}

  void Begin() {
    txs_.push_back({});
    open_ = true;
  }
  uint64_t Add() {
    txs_.back().events.push_back(next_);
    return next_++;
  }
  void Commit(uint64_t end) {
    txs_.back().end = end;
    txs_.back().committed = true;
    open_ = false;
  }
  void Ack(uint64_t seq) { acked_.insert(seq); }
  void Fail(uint64_t seq) { failed_.insert(seq); }
  void WalEnd(uint64_t lsn) { wal_end_ = std::max(wal_end_, lsn); }

  uint64_t Confirmable() {
    // Transactions before `done_` were fully acknowledged already.
    for (; done_ < txs_.size(); ++done_) {
      const Tx& tx = txs_[done_];
      bool done = tx.committed;
      for (uint64_t s : tx.events) done = done && acked_.count(s) > 0;
      if (!done) break;
      confirmed_ = std::max(confirmed_, tx.end);
    }
    if (done_ == txs_.size() && !open_ && failed_.empty()) {
      confirmed_ = std::max(confirmed_, wal_end_);
    }
    return confirmed_;
  }

 private:
  struct Tx {
    std::vector<uint64_t> events;
    uint64_t end = 0;
    bool committed = false;
  };
  std::vector<Tx> txs_;
  size_t done_ = 0;
  std::set<uint64_t> acked_, failed_;
  bool open_ = false;
  uint64_t next_ = 0;
  uint64_t wal_end_ = 0;
  uint64_t confirmed_;
};

class AckTrackerRandomTest : public ::testing::TestWithParam<int> {};

TEST_P(AckTrackerRandomTest, MatchesReferenceModel) {
  std::mt19937_64 rng(GetParam());
  const bool with_failure = GetParam() % 3 == 0;
  AckTracker tracker(Lsn(1000));
  ReferenceTracker reference(1000);
  std::vector<uint64_t> pending;  // registered, not yet reported
  uint64_t lsn = 1000;
  bool open = false;
  bool failed = false;
  Lsn confirmable = tracker.Confirmable();
  int advances = 0;

  for (int step = 0; step < 20000; ++step) {
    int op = std::uniform_int_distribution<int>(0, 99)(rng);
    if (op < 10 && !open) {
      tracker.BeginTransaction();
      reference.Begin();
      open = true;
    } else if (op < 40 && open) {
      uint64_t seq = tracker.AddEvent();
      ASSERT_EQ(seq, reference.Add());
      pending.push_back(seq);
    } else if (op < 50 && open) {
      lsn += std::uniform_int_distribution<uint64_t>(1, 100)(rng);
      tracker.CommitTransaction(Lsn(lsn));
      reference.Commit(lsn);
      open = false;
    } else if (op < 85 && !pending.empty()) {
      size_t i =
          std::uniform_int_distribution<size_t>(0, pending.size() - 1)(rng);
      uint64_t seq = pending[i];
      pending[i] = pending.back();
      pending.pop_back();
      if (with_failure && !failed && op == 84) {
        tracker.Fail(seq, absl::UnavailableError("x"));
        reference.Fail(seq);
        failed = true;
      } else {
        tracker.Acknowledge(seq);
        reference.Ack(seq);
      }
    } else if (op >= 95) {
      uint64_t wal_end =
          lsn + std::uniform_int_distribution<uint64_t>(0, 50)(rng);
      if (!open) lsn = wal_end;  // commits after it come later in the WAL
      tracker.ObserveIdlePosition(Lsn(wal_end));
      reference.WalEnd(wal_end);
    }
    Lsn before = confirmable;
    confirmable = tracker.Confirmable();
    ASSERT_EQ(confirmable.value(), reference.Confirmable()) << "step " << step;
    ASSERT_GE(confirmable, before);
    if (confirmable > before) ++advances;
    ASSERT_EQ(tracker.EventsInFlight(), pending.size()) << "step " << step;
    ASSERT_EQ(tracker.failure().ok(), !failed);
  }
  // The run exercised the interesting paths.
  if (with_failure) {
    EXPECT_TRUE(failed);
  } else {
    EXPECT_GT(advances, 20);
  }
}

INSTANTIATE_TEST_SUITE_P(Seeds, AckTrackerRandomTest, ::testing::Range(1, 13));

}  // namespace
}  // namespace outboxd
