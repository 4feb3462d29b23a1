// FakeSource: a scripted EventSource (sources/event_source.h), intended for
// testing the Publisher without a database.
//
// Read hands over `script` in order (one entry per call, nothing once it is
// empty); an entry may instead be an error (e.g. kUnavailable: a lost
// connection). Every Durable call is a "tick": the test's `on_tick` runs
// there, sees the durable position and may act (release acknowledgements,
// raise errors, set the stop flag).
//
// By default the source has no descriptor: Read returns at once (nothing
// once the script is empty). After UseWaitFd() it has one, readable while
// the script is not empty, and NextDue() is `next_due`: the Publisher then
// reads it without waiting and sleeps in poll() in between.
#ifndef OUTBOXD_TESTS_FAKES_FAKE_SOURCE_H_
#define OUTBOXD_TESTS_FAKES_FAKE_SOURCE_H_

#include <deque>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/wake_pipe.h"
#include "sources/event_source.h"

namespace outboxd::testing {

class FakeSource : public EventSource {
 public:
  struct Entry {
    absl::Status error;  // non-OK: Read fails with it
    SourceRead read;
  };

  // --- what the test controls ---------------------------------------------
  std::deque<Entry> script;
  // Scripts handed over after each reconnect (one per Connect after the
  // first), replacing what was left of `script`.
  std::deque<std::deque<Entry>> after_reconnect;
  std::function<void(FakeSource&)> on_tick;
  // Errors the next Connect calls return, one each (e.g. kUnavailable: the
  // slot is active in another process).
  std::deque<absl::Status> connect_errors;
  std::string source_identity = "7000000000000000001/db/slot";
  // Each reconnect starts the stream over at the next of these (a new slot,
  // a server whose WAL went back: ConnectResult::restart_at), while any are
  // left.
  std::deque<SourcePosition> restart_on_reconnect;
  // ConnectResult::history of every connect.
  std::string history;

  void Add(SourceRead r) {
    script.push_back({absl::OkStatus(), std::move(r)});
    SyncFd();
  }
  void Fail(absl::Status s) {
    script.push_back({std::move(s), {}});
    SyncFd();
  }
  // Gives the source a descriptor (see above).
  void UseWaitFd() {
    wait_pipe_ = *WakePipe::Create();
    SyncFd();
  }
  absl::Time next_due = absl::InfiniteFuture();

  // --- what the test observes ---------------------------------------------
  SourcePosition durable;  // the newest durable position given
  std::vector<SourcePosition> durable_seen;  // each change, in order
  int connects = 0;                          // successful ones
  int failed_connects = 0;  // those that returned a connect_errors entry
  int disconnects = 0;
  int reads = 0;        // Read calls that handed over an item or failed
  int empty_reads = 0;  // Read calls that found the script empty
  int ticks = 0;        // Durable calls
  bool finished = false;
  bool finished_clean = false;
  SourcePosition finished_at;
  // A transaction is half handed over (Begin read, Commit not yet).
  bool in_transaction() const { return open_; }

  // --- EventSource --------------------------------------------------------
  absl::StatusOr<ConnectResult> Connect(const ConnectContext& ctx) override {
    if (!connect_errors.empty()) {
      absl::Status error = std::move(connect_errors.front());
      connect_errors.pop_front();
      ++failed_connects;
      return error;
    }
    ++connects;
    ConnectResult r;
    if (ctx.first) {
      r.restart_at = SourcePosition(0);
    } else {
      if (!after_reconnect.empty()) {
        script = std::move(after_reconnect.front());
        after_reconnect.pop_front();
      }
      if (!restart_on_reconnect.empty()) {
        r.restart_at = restart_on_reconnect.front();
        restart_on_reconnect.pop_front();
      }
    }
    r.identity = source_identity;
    r.history = history;
    r.ready_line = "fake source ready";
    SyncFd();
    open_ = false;
    return r;
  }
  void Disconnect() override {
    ++disconnects;
    open_ = false;
  }
  absl::StatusOr<SourceRead> Read(absl::Duration) override {
    if (script.empty()) {
      ++empty_reads;
      return SourceRead{};
    }
    Entry e = std::move(script.front());
    script.pop_front();
    SyncFd();
    ++reads;
    if (!e.error.ok()) return e.error;
    if (std::holds_alternative<SourceBegin>(e.read.item)) open_ = true;
    if (std::holds_alternative<SourceCommit>(e.read.item)) open_ = false;
    return std::move(e.read);
  }
  absl::Status Durable(SourcePosition p) override {
    if (p != durable) durable_seen.push_back(p);
    durable = p;
    ++ticks;
    if (on_tick) on_tick(*this);
    SyncFd();  // the tick may have added to the script
    return absl::OkStatus();
  }
  int WaitFd() const override { return wait_pipe_.read_fd(); }
  absl::Time NextDue() const override {
    return wait_pipe_.read_fd() >= 0 ? next_due : absl::InfiniteFuture();
  }
  absl::Status Finish(SourcePosition p, bool clean) override {
    finished = true;
    finished_clean = clean;
    finished_at = p;
    return absl::OkStatus();
  }
  std::string Progress() const override { return "fake"; }
  std::string Describe(SourcePosition p) const override {
    return absl::StrCat(p.value());
  }

 private:
  // Readable exactly while the script is not empty.
  void SyncFd() {
    if (script.empty()) {
      wait_pipe_.Drain();
    } else {
      wait_pipe_.Notify();
    }
  }

  bool open_ = false;
  WakePipe wait_pipe_;
};

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_FAKES_FAKE_SOURCE_H_
