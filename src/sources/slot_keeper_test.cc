#include "sources/slot_keeper.h"

#include "absl/strings/cord.h"
#include "gtest/gtest.h"

namespace outboxd {
namespace {

absl::Status WithSqlState(absl::Status s, absl::string_view sqlstate) {
  s.SetPayload(kSqlStatePayload, absl::Cord(sqlstate));
  return s;
}

TEST(ClassifyStartFailureTest, InvalidatedWithARecordIsLost) {
  absl::Status invalidated = WithSqlState(
      absl::FailedPreconditionError("cannot start replication from slot s: "
                                    "can no longer get changes"),
      sqlstate::kObjectNotInPrerequisiteState);
  EXPECT_EQ(ClassifyStartFailure(invalidated, /*recorded=*/true),
            StartFailure::kInvalidated);
  // No record: outboxd never streamed from it; the error stands.
  EXPECT_EQ(ClassifyStartFailure(invalidated, /*recorded=*/false),
            StartFailure::kOther);
}

TEST(ClassifyStartFailureTest, ObjectInUseIsASlotTaken) {
  absl::Status in_use = WithSqlState(
      absl::UnavailableError("replication slot s is active for PID 42"),
      sqlstate::kObjectInUse);
  EXPECT_EQ(ClassifyStartFailure(in_use, true), StartFailure::kSlotTaken);
  EXPECT_EQ(ClassifyStartFailure(in_use, false), StartFailure::kSlotTaken);
}

TEST(ClassifyStartFailureTest, ASlotDroppedSinceTheCheckIsCheckedAgain) {
  absl::Status gone = WithSqlState(
      absl::FailedPreconditionError("replication slot \"s\" does not exist"),
      sqlstate::kUndefinedObject);
  EXPECT_EQ(ClassifyStartFailure(gone, true), StartFailure::kSlotGone);
  EXPECT_EQ(ClassifyStartFailure(gone, false), StartFailure::kSlotGone);
}

TEST(ClassifyStartFailureTest, TextWithoutASqlStateDecidesNothing) {
  EXPECT_EQ(ClassifyStartFailure(absl::UnavailableError(
                                     "replication slot s is active for PID 42"),
                                 true),
            StartFailure::kOther);
  EXPECT_EQ(ClassifyStartFailure(
                absl::UnavailableError("server closed the connection"), true),
            StartFailure::kOther);
  EXPECT_EQ(ClassifyStartFailure(
                WithSqlState(absl::FailedPreconditionError("no publication"),
                             sqlstate::kUndefinedObject),
                true),
            StartFailure::kOther);
}

TEST(WithStartSaidInvalidatedTest, OnlyAResumeBecomesLost) {
  using Kind = SlotVerdict::Kind;
  SlotVerdict lost =
      WithStartSaidInvalidated({Kind::kResume, ""}, /*said=*/true);
  EXPECT_EQ(lost.kind, Kind::kLost);
  EXPECT_EQ(lost.why, "START_REPLICATION says the slot is invalidated");
  EXPECT_EQ(WithStartSaidInvalidated({Kind::kResume, ""}, false).kind,
            Kind::kResume);
  for (Kind k : {Kind::kCreate, Kind::kAdopt}) {
    EXPECT_EQ(WithStartSaidInvalidated({k, ""}, true).kind, k);
  }
  SlotVerdict already = WithStartSaidInvalidated({Kind::kLost, "gone"}, true);
  EXPECT_EQ(already.kind, Kind::kLost);
  EXPECT_EQ(already.why, "gone");
}

}  // namespace
}  // namespace outboxd
