// Tests for the stop flag of the mains: SIGTERM and SIGINT set it, SIGPIPE
// does not end the process.
#include "common/stop_signal.h"

#include <poll.h>

#include <csignal>

#include "gtest/gtest.h"

namespace outboxd {
namespace {

TEST(StopSignalTest, TermAndIntSetTheFlagAndPipeIsIgnored) {
  std::atomic<bool>& stop = InstallStopSignals();
  EXPECT_EQ(&stop, &InstallStopSignals());  // one flag per process
  stop.store(false);
  ASSERT_EQ(raise(SIGPIPE), 0);  // the process would end here otherwise
  EXPECT_FALSE(stop.load());
  ASSERT_EQ(raise(SIGTERM), 0);
  EXPECT_TRUE(stop.load());
  stop.store(false);
  ASSERT_EQ(raise(SIGINT), 0);
  EXPECT_TRUE(stop.load());
  stop.store(false);
}

TEST(StopSignalTest, TheFdBecomesReadableOnAStopSignal) {
  InstallStopSignals();
  const int fd = StopSignalFd();
  ASSERT_GE(fd, 0);
  ASSERT_EQ(raise(SIGTERM), 0);
  pollfd pfd{fd, POLLIN, 0};
  // Readable now, without waiting (timeout 0), and it stays readable.
  EXPECT_EQ(poll(&pfd, 1, 0), 1);
  EXPECT_EQ(poll(&pfd, 1, 0), 1);
  InstallStopSignals().store(false);
}

}  // namespace
}  // namespace outboxd
