// at-least-once (pipeline/delivery.h): each record is acknowledged by its
// own delivery report. Resent events are produced again: duplicates at
// worst, never a loss.
#include "common/logging.h"
#include "pipeline/delivery.h"

namespace outboxd {
namespace {

class AtLeastOnceDelivery final : public Delivery {
 public:
  explicit AtLeastOnceDelivery(DeliveryHost& host) : host_(host) {}

  absl::Status CheckSources(size_t) const override { return absl::OkStatus(); }
  bool SinkNeedsIdentity() const override { return false; }
  ProducerOptions Producer(const ProducerOptions& base,
                           const std::string&) override {
    return base;
  }
  void Attach(Sink& sink) override { sink_ = &sink; }
  absl::Status Ready(
      const std::string&, const std::string&,
      const std::function<absl::Status(const EventPosition&)>&) override {
    return absl::OkStatus();
  }
  void SourceRestarted() override {}  // nothing is ever skipped

  bool Skips(const EventAt&) override { return false; }
  absl::Status BeforeProduce() override { return absl::OkStatus(); }
  void Produced(uint64_t, const EventAt&, const std::string&) override {}
  void OnReport(uint64_t sequence, absl::Status status) override {
    if (status.ok()) {
      host_.Acknowledge(sequence);
    } else {
      host_.Fail(sequence, std::move(status));
    }
  }

  bool CommitDue(absl::Time, bool) const override { return false; }
  absl::Time Deadline() const override { return absl::InfiniteFuture(); }
  absl::Status Commit(absl::Time) override { return absl::OkStatus(); }
  absl::Status Check() override {
    return sink_ == nullptr ? absl::OkStatus() : sink_->fatal_error();
  }
  bool failed() const override { return false; }
  bool TakeRewind() override { return false; }
  bool IsolatesSources() const override { return true; }
  bool ReplacesFailedSink() const override { return true; }

  // A clean stop waits (until `deadline`) for what is in flight, the
  // sources' keep-alive going on, so that it can be confirmed.
  absl::Status Finish(bool clean, absl::Time deadline) override {
    if (sink_ == nullptr || !clean) return absl::OkStatus();
    while (sink_->OutQueueLength() > 0 && absl::Now() < deadline) {
      sink_->Poll(absl::Milliseconds(50));
      host_.KeepSourcesAlive().IgnoreError();
    }
    if (sink_->OutQueueLength() > 0) {
      spdlog::warn("{} events not acknowledged at stop; they will be resent",
                   sink_->OutQueueLength());
    }
    return absl::OkStatus();
  }
  void AddStats(PipelineStats&) const override {}

 private:
  DeliveryHost& host_;
  Sink* sink_ = nullptr;
};

}  // namespace

std::unique_ptr<Delivery> NewAtLeastOnceDelivery(DeliveryHost& host) {
  return std::make_unique<AtLeastOnceDelivery>(host);
}

}  // namespace outboxd
