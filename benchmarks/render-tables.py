#!/usr/bin/env python3
"""Renders the benchmark tables of the docs from benchmarks/results/.

Every benchmark figure in README.md and docs/benchmarks.md has one source:
the files the benchmark programs write to benchmarks/results/ (stem.md,
stem.json; see WriteResults in benchmarks/bench_util.cc). This script
rewrites the regions between markers

    <!-- bench:SPEC -->
    ... generated, do not edit ...
    <!-- /bench -->

where SPEC is one of
    FILE.md            the whole results file (its caption, warnings, tables)
    FILE.md table=N    the N-th table of that file (0-based)
    summary            the README's short summary (figures picked from the
                       result tables, each with the file and date of its run)

Usage:
    benchmarks/render-tables.py           rewrite the regions in place
    benchmarks/render-tables.py --check   exit 1 naming each stale region

Python 3 standard library only.
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DOCS = ["README.md", os.path.join("docs", "benchmarks.md")]

REGION = re.compile(
    r"(?P<open><!-- bench:(?P<spec>[^>]*?) -->\n)(?P<body>.*?)(?P<close><!-- /bench -->)",
    re.S)


class RenderError(Exception):
    pass


def read_result(name):
    path = os.path.join(RESULTS, name)
    if not os.path.isfile(path):
        raise RenderError("no results file benchmarks/results/%s" % name)
    with open(path, encoding="utf-8") as f:
        return f.read()


def tables_of(text):
    """The markdown tables of `text`, each as a list of its lines."""
    tables, current = [], []
    for line in text.split("\n"):
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


class Table:
    """One results table: header cells and rows of cells."""

    def __init__(self, lines):
        self.header = cells(lines[0])
        self.rows = [cells(l) for l in lines[2:]]

    def col(self, name):
        if name not in self.header:
            raise RenderError("no column %r in table %s" % (name, self.header))
        return self.header.index(name)

    def cell(self, where, column):
        """The cell of `column` in the one row whose cells match `where`
        ({column: value}; a column "" is the first, unnamed one)."""
        found = [r for r in self.rows
                 if all(r[self.col(k)] == v for k, v in where.items())]
        if len(found) != 1:
            raise RenderError("%d rows match %r" % (len(found), where))
        return found[0][self.col(column)]


def table(name, n=0):
    t = tables_of(read_result(name))
    if n >= len(t):
        raise RenderError("%s has %d tables, not %d" % (name, len(t), n + 1))
    return Table(t[n])


def table_with(name, column):
    """The one table of `name` that has `column`."""
    found = [Table(t) for t in tables_of(read_result(name))
             if column in cells(t[0])]
    if len(found) != 1:
        raise RenderError("%s: %d tables with a column %r" % (
            name, len(found), column))
    return found[0]


def run_date(stem):
    """The date of the run that wrote `stem`.md, from its JSON."""
    doc = json.loads(read_result(stem + ".json"))
    date = (doc.get("machine", {}).get("date_utc")
            or doc.get("context", {}).get("date") or "")
    return date[:10]


def link(stem, prefix):
    return "[%s.md](%sbenchmarks/results/%s.md), %s" % (
        stem, prefix, stem, run_date(stem))


def summary(prefix):
    lat = table("latency.md")
    thr = table("throughput.md")
    live = table("live.md")
    first = table("first-event.md")
    first_a = table("first-event-apache.md")
    multi = table("multidb.md")
    deb = table("vs-debezium.md", 0)
    dec = table("decoder.md")
    rec = table("reconcile.md")
    side = table_with("live-vs-debezium-apache.md", "whole path vs Debezium")

    def side_row(rate):
        def of(who, col):
            return side.cell({"target/s": rate, "publisher": who}, col)
        return ("beside Debezium (Apache Kafka), live %s/s, one event per "
                "transaction: CPU per event of the whole path (publisher + "
                "walsender + broker); commit to consumer p50 / p99" % (
                    "{:,}".format(int(rate))),
                "outboxd %s µs, Debezium %s µs (**%s**); outboxd %s / %s ms, "
                "Debezium %s / %s ms" % (
                    of("outboxd", "whole path µs"),
                    of("debezium", "whole path µs"),
                    of("outboxd", "whole path vs Debezium").strip("*"),
                    of("outboxd", "p50 ms"), of("outboxd", "p99 ms"),
                    of("debezium", "p50 ms"), of("debezium", "p99 ms")),
                link("live-vs-debezium-apache", prefix))

    def lat_cell(mode, rate, col):
        return lat.cell({"mode": mode, "offered/s": rate}, col)

    takeover = [r for r in first.rows if r[0] == "takeover"
                and "--standby-poll-interval=20ms" in r[1]]
    if len(takeover) != 1:
        raise RenderError("first-event.md: no default takeover row")
    start_what = [r for r in first.rows if r[0] == "start"][0][1]
    start_a = [r for r in first_a.rows if r[0] == "start" and r[1] == start_what]
    if len(start_a) != 1:
        raise RenderError("first-event-apache.md: no start row")
    med = first.col("median ms")
    m = {"": "steady: RSS MB (mean VmRSS)"}
    c = {"": "steady: outboxd CPU s per 1,000 events"}
    rows = [
        ("CDC latency, commit to consumer, 1,000 events/s: p50 / p99",
         "%s / %s ms (poll every 1 s: %s / %s ms)" % (
             lat_cell("cdc", "1000", "p50 ms"), lat_cell("cdc", "1000", "p99 ms"),
             lat_cell("poll1s", "1000", "p50 ms"),
             lat_cell("poll1s", "1000", "p99 ms")),
         link("latency", prefix)),
        ("CDC latency at 100 events/s: p50 / p99",
         "%s / %s ms" % (lat_cell("cdc", "100", "p50 ms"),
                         lat_cell("cdc", "100", "p99 ms")),
         link("latency", prefix)),
        ("backlog drain against pg_recvlogical on the same WAL",
         "%s (table rows), %s (logical messages)" % (
             thr.cell({"kind": "insert"}, "backlog / pg_recvlogical"),
             thr.cell({"kind": "message"}, "backlog / pg_recvlogical")),
         link("throughput", prefix)),
        ("outboxd peak RSS draining 1,000,000 events",
         "%s MB" % thr.cell({"kind": "insert"}, "outboxd peak RSS MB"),
         link("throughput", prefix)),
        ("CPU per event, live, one event per transaction, 3,000/s",
         "%s µs" % live.cell({"mode": "cdc", "target/s": "3000"},
                             "outboxd CPU µs/event"),
         link("live", prefix)),
        ("the reconciler at its default (every 30 s), 3,000 events/s: "
         "its passes, share of outboxd's CPU",
         "%s (whole outboxd against the reconciler off: %s)" % (
             rec.cell({"reconciler": "default"},
                      "thread share of outboxd (off)"),
             rec.cell({"reconciler": "default"}, "vs off")),
         link("reconcile", prefix)),
        ("start to first record (median)",
         "%s ms (Apache Kafka: %s ms)" % (
             [r for r in first.rows if r[0] == "start"][0][med],
             start_a[0][first_a.col("median ms")]),
         link("first-event", prefix)),
        ("standby takeover after SIGKILL to first record (median)",
         "%s ms" % takeover[0][med], link("first-event", prefix)),
        ("20 databases: one outboxd against 20 processes, steady RSS",
         "%s MB against %s MB" % (
             multi.cell(m, "one outboxd (--databases)"),
             multi.cell(m, "20 outboxd processes")),
         link("multidb", prefix)),
        ("20 databases: CPU per 1,000 events, processes / one",
         multi.cell(c, "processes / one"), link("multidb", prefix)),
        ("beside Debezium (Apache Kafka): backlog of 1,000,000 rows, events/s",
         "outboxd %s, Debezium %s" % (
             deb.cell({"run": "outboxd"}, "events/s (start to last record)"),
             deb.cell({"run": "debezium"}, "events/s (start to last record)")),
         link("vs-debezium", prefix)),
        side_row("3000"),
        side_row("8000"),
        ("pgoutput decoder, outbox insert",
         "%s million messages/s" % dec.cell(
             {"benchmark": "BM_DecodeOutboxInsert"}, "million messages/s"),
         link("decoder", prefix)),
    ]
    out = ["| what | result | run |", "|---|---|---|"]
    out += ["| %s | %s | %s |" % r for r in rows]
    return "\n".join(out)


def render(spec, doc):
    prefix = "" if os.path.dirname(doc) == "" else "../"
    spec = spec.strip()
    if spec == "summary":
        return summary(prefix)
    m = re.fullmatch(r"([A-Za-z0-9_.-]+\.md)(?: table=(\d+))?", spec)
    if not m:
        raise RenderError("bad marker spec %r" % spec)
    if m.group(2) is None:
        return read_result(m.group(1)).strip("\n")
    t = tables_of(read_result(m.group(1)))
    n = int(m.group(2))
    if n >= len(t):
        raise RenderError("%s has %d tables, not %d" % (m.group(1), len(t), n + 1))
    return "\n".join(t[n])


def process(doc):
    path = os.path.join(ROOT, doc)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    stale = []

    def repl(m):
        try:
            body = "\n" + render(m.group("spec"), doc) + "\n\n"
        except RenderError as e:
            raise RenderError("%s: bench:%s: %s" % (doc, m.group("spec"), e))
        if body != m.group("body"):
            stale.append(m.group("spec"))
        return m.group("open") + body + m.group("close")

    new = REGION.sub(repl, text)
    opens = text.count("<!-- bench:")
    closes = text.count("<!-- /bench -->")
    if opens != closes or opens != len(REGION.findall(text)):
        raise RenderError("%s: unbalanced bench markers" % doc)
    return path, text, new, stale


def main(argv):
    check = "--check" in argv[1:]
    if any(a not in ("--check",) for a in argv[1:]):
        print("usage: render-tables.py [--check]", file=sys.stderr)
        return 2
    failed = False
    try:
        for doc in DOCS:
            path, old, new, stale = process(doc)
            if check:
                for spec in stale:
                    print("%s: region bench:%s is stale (run "
                          "benchmarks/render-tables.py)" % (doc, spec))
                    failed = True
            elif new != old:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(new)
                print("rewrote %s (%s)" % (doc, ", ".join(stale)))
    except RenderError as e:
        print("render-tables: %s" % e, file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
