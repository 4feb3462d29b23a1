// Scraping outboxd's metrics endpoint in tests: the port it bound (from its
// log), an HTTP GET through curl, and one sample of a scrape.
#ifndef OUTBOXD_TESTS_HARNESS_METRICS_SCRAPE_H_
#define OUTBOXD_TESTS_HARNESS_METRICS_SCRAPE_H_

#include <string>

namespace outboxd::testing {

// The port of the "metrics on http://HOST:PORT/metrics" line of an outboxd
// log (started with --metrics-address=127.0.0.1:0); 0 when there is none.
int MetricsPort(const std::string& log);

// GET http://127.0.0.1:`port``path`: the body, and the HTTP status in
// `http_code` (0 and "" when curl fails).
std::string Get(int port, const std::string& path, int* http_code);

// The value of the sample whose series (name and labels, as exposed) is
// `series`; -1 when absent.
double Sample(const std::string& scrape, const std::string& series);

}  // namespace outboxd::testing

#endif  // OUTBOXD_TESTS_HARNESS_METRICS_SCRAPE_H_
