#include "sources/slot_loss.h"

#include "absl/strings/cord.h"
#include "gtest/gtest.h"
#include "pg/connection.h"

namespace outboxd {
namespace {

using Kind = SlotVerdict::Kind;

constexpr char kSource[] = "7300000000000000001/db/s";

PublisherState Recorded(uint64_t lsn) {
  PublisherState s;
  s.slot = "s";
  s.source = kSource;
  s.last_ack = Lsn(lsn);
  s.commit_time_unix_us = 1700000000000000;
  s.commit_time_text = "2023-11-14 22:13:20+00";
  s.xmin_horizon = "740";
  return s;
}

SlotInfo Slot(uint64_t confirmed, std::string wal_status = "reserved") {
  SlotInfo i;
  i.confirmed_flush = Lsn(confirmed);
  i.restart_lsn = Lsn(confirmed > 100 ? confirmed - 100 : 1);
  i.wal_status = std::move(wal_status);
  return i;
}

Kind Judge(const std::optional<SlotInfo>& slot,
           const std::optional<PublisherState>& state) {
  auto v = JudgeSlot(slot, state, kSource, "s");
  EXPECT_TRUE(v.ok()) << v.status();
  return v.ok() ? v->kind : Kind::kResume;
}

TEST(SlotLossTest, FirstStartCreatesOrAdopts) {
  EXPECT_EQ(Judge(std::nullopt, std::nullopt), Kind::kCreate);
  EXPECT_EQ(Judge(Slot(5000), std::nullopt), Kind::kAdopt);
}

TEST(SlotLossTest, HealthySlotAtOrBehindTheRecordResumes) {
  EXPECT_EQ(Judge(Slot(5000), Recorded(5000)), Kind::kResume);
  // Recorded, not yet reported (or the server has not saved it).
  EXPECT_EQ(Judge(Slot(4000), Recorded(5000)), Kind::kResume);
}

TEST(SlotLossTest, MissingSlotWithARecordIsLost) {
  auto v = JudgeSlot(std::nullopt, Recorded(5000), kSource, "s");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->kind, Kind::kLost);
  EXPECT_NE(v->why.find("does not exist"), std::string::npos) << v->why;
}

TEST(SlotLossTest, InvalidatedSlotIsLost) {
  EXPECT_EQ(Judge(Slot(5000, "lost"), Recorded(5000)), Kind::kLost);
  SlotInfo no_restart = Slot(5000);
  no_restart.restart_lsn = Lsn();
  EXPECT_EQ(Judge(no_restart, Recorded(5000)), Kind::kLost);
  // Still streamable: not lost yet.
  EXPECT_EQ(Judge(Slot(5000, "unreserved"), Recorded(5000)), Kind::kResume);
}

TEST(SlotLossTest, SlotPastTheRecordWasRecreatedAndIsLost) {
  auto v = JudgeSlot(Slot(5001), Recorded(5000), kSource, "s");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->kind, Kind::kLost);
  EXPECT_NE(v->why.find("re-created"), std::string::npos) << v->why;
}

// After a promotion (17+): the failover slot synchronized from the former
// primary may be ahead of the row replayed here; that primary's outboxd
// confirmed the position only after Kafka acknowledged what precedes it.
TEST(SlotLossTest, SyncedFailoverSlotAheadOfTheRecordIsAdopted) {
  SlotInfo synced = Slot(5001);
  synced.failover = true;
  synced.synced = true;
  auto v = JudgeSlot(synced, Recorded(5000), kSource, "s");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->kind, Kind::kAdopt);
  EXPECT_NE(v->why.find("failover slot"), std::string::npos) << v->why;
  // At or behind the record: resumed as any healthy slot.
  synced.confirmed_flush = Lsn(5000);
  EXPECT_EQ(Judge(synced, Recorded(5000)), Kind::kResume);
  // Ahead without having been synced (advanced or re-created on this
  // server), or synced but not a failover slot: lost.
  SlotInfo local = Slot(5001);
  local.failover = true;
  EXPECT_EQ(Judge(local, Recorded(5000)), Kind::kLost);
  SlotInfo not_failover = Slot(5001);
  not_failover.failover = false;
  not_failover.synced = true;
  EXPECT_EQ(Judge(not_failover, Recorded(5000)), Kind::kLost);
  // A synced slot of another cluster, or an invalidated one: still lost.
  PublisherState other = Recorded(5000);
  other.source = "7399999999999999999/db/s";
  synced.confirmed_flush = Lsn(5001);
  EXPECT_EQ(Judge(synced, other), Kind::kLost);
  synced.invalidation_reason = "wal_removed";
  EXPECT_EQ(Judge(synced, Recorded(5000)), Kind::kLost);
}

// PostgreSQL 17+ says why it invalidated a slot (18 adds idle_timeout):
// the error line carries it.
TEST(SlotLossTest, InvalidationReasonIsInTheLine) {
  SlotInfo idle = Slot(5000);
  idle.invalidation_reason = "idle_timeout";
  auto v = JudgeSlot(idle, Recorded(5000), kSource, "s");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->kind, Kind::kLost);
  EXPECT_NE(v->why.find("'idle_timeout'"), std::string::npos) << v->why;
  EXPECT_NE(v->why.find("idle_replication_slot_timeout"), std::string::npos);
  SlotInfo removed = Slot(5000, "lost");
  removed.restart_lsn = Lsn();
  removed.invalidation_reason = "wal_removed";
  v = JudgeSlot(removed, Recorded(5000), kSource, "s");
  ASSERT_TRUE(v.ok());
  EXPECT_NE(v->why.find("'wal_removed'"), std::string::npos) << v->why;
  EXPECT_NE(v->why.find("max_slot_wal_keep_size"), std::string::npos);
  auto first = JudgeSlot(removed, std::nullopt, kSource, "s");
  EXPECT_NE(first.status().message().find("wal_removed"), std::string::npos);
}

// PostgreSQL 16 has no invalidation_reason, and its `conflicting` is true
// for a slot invalidated by max_slot_wal_keep_size as for one that
// conflicted with recovery: the line must not claim to know which.
TEST(SlotLossTest, SixteenDoesNotSayWhyAndTheLineDoesNotGuess) {
  SlotInfo sixteen = Slot(5000, "lost");
  sixteen.restart_lsn = Lsn();
  sixteen.conflicting = true;
  auto v = JudgeSlot(sixteen, Recorded(5000), kSource, "s");
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->kind, Kind::kLost);
  EXPECT_NE(v->why.find("conflicting true"), std::string::npos) << v->why;
  EXPECT_NE(v->why.find("conflicted with recovery"), std::string::npos)
      << v->why;
  EXPECT_NE(v->why.find("does not say which"), std::string::npos) << v->why;
  // 15: only max_slot_wal_keep_size invalidates.
  sixteen.conflicting = std::nullopt;
  v = JudgeSlot(sixteen, Recorded(5000), kSource, "s");
  ASSERT_TRUE(v.ok());
  EXPECT_NE(v->why.find("max_slot_wal_keep_size"), std::string::npos) << v->why;
  EXPECT_EQ(v->why.find("recovery"), std::string::npos) << v->why;
}

TEST(SlotLossTest, RecordOfAnotherClusterIsLost) {
  PublisherState other = Recorded(5000);
  other.source = "7399999999999999999/db/s";
  EXPECT_EQ(Judge(Slot(100), other), Kind::kLost);
}

TEST(SlotLossTest, InvalidatedSlotWithoutRecordIsAClearError) {
  auto v = JudgeSlot(Slot(5000, "lost"), std::nullopt, kSource, "s");
  EXPECT_TRUE(absl::IsFailedPrecondition(v.status())) << v.status();
  EXPECT_NE(v.status().message().find("pg_drop_replication_slot"),
            std::string::npos);
}

TEST(SlotLossTest, MessageIsOneLineWithPositionTimeAndWhatToDo) {
  SlotVerdict v{Kind::kLost, "the slot does not exist"};
  std::string m = SlotLossMessage("s", v, Recorded(0x16B3748));
  EXPECT_EQ(m.find('\n'), std::string::npos);
  EXPECT_NE(m.find("replication slot s is lost"), std::string::npos) << m;
  EXPECT_NE(m.find("0/16B3748"), std::string::npos) << m;
  EXPECT_NE(m.find("2023-11-14 22:13:20+00"), std::string::npos) << m;
  EXPECT_NE(m.find("--on-slot-loss=republish"), std::string::npos) << m;
  EXPECT_NE(m.find("DELETE FROM outbox.publisher_state WHERE slot_name = 's'"),
            std::string::npos)
      << m;
}

absl::Status WithSqlState(absl::Status s, absl::string_view sqlstate) {
  s.SetPayload(kSqlStatePayload, absl::Cord(sqlstate));
  return s;
}

TEST(SlotLossTest, RecognisesStartReplicationInvalidatedError) {
  // By SQLSTATE 55000, whatever the text (lc_messages may translate it).
  EXPECT_TRUE(IsSlotInvalidatedError(
      WithSqlState(absl::FailedPreconditionError(
                       "cannot start replication from slot s: kann keine "
                       "Änderungen mehr aus Replikations-Slot »s« lesen"),
                   "55000")));
  EXPECT_FALSE(IsSlotInvalidatedError(WithSqlState(
      absl::UnavailableError("replication slot \"s\" is active for PID 42"),
      "55006")));
  // The English text alone, without the SQLSTATE, is not enough.
  EXPECT_FALSE(IsSlotInvalidatedError(absl::FailedPreconditionError(
      "START_REPLICATION: ERROR:  can no longer get changes from replication "
      "slot \"s\"")));
}

}  // namespace
}  // namespace outboxd
