"""Turns scripts/bench's measurements into results.json, chart.png and the results section of
BENCHMARKS.md (between its `<!-- results:begin -->` and `<!-- results:end -->` markers).

    python report.py RESULTS_DIR BENCHMARKS.md
"""

import json
import os
import platform
import sys
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
SYSTEMS = ("ceiling", "orderfold", "quixstreams", "faust")
# scripts/bench's latency passes: the rate, then "-fetch10" for the pass whose clients hold a
# fetch at most 10 ms (fetch.wait.max.ms) instead of librdkafka's 500 ms.
LATENCY_PASSES = ("5000", "20000", "5000-fetch10", "20000-fetch10")
COLORS = {"ceiling": "#999999", "orderfold": "#1f77b4", "quixstreams": "#ff7f0e",
          "faust": "#2ca02c"}
LABELS = {"ceiling": "raw ceiling (copy)", "orderfold": "orderfold",
          "quixstreams": "Quix Streams 3.28.1", "faust": "faust-streaming 0.15.3"}


def load(d, name):
    path = os.path.join(d, name)
    return json.load(open(path)) if os.path.exists(path) else None


def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def main():
    d, doc = sys.argv[1], sys.argv[2]
    expected = load(d, "expected.json")
    events = expected["events"]
    systems = {}
    for s in SYSTEMS:
        m = load(d, f"{s}.measure.json")
        if m is None:
            continue
        check = load(d, f"{s}.check.json") or {"same": False}
        ok = bool(check.get("same")) and m["exit_code"] == 0
        systems[s] = {
            "correct": ok,
            "events_per_s": events / m["seconds"] if ok else None,
            "seconds": m["seconds"],
            "cpu_seconds_per_million": m["cpu_seconds"] * 1e6 / events,
            "peak_rss_mb": m["peak_rss_mb"],
            "broker_cpu_seconds": (load(d, f"{s}.broker.json") or {}).get("broker_cpu_seconds"),
        }
    latency = {p: load(d, f"latency-{p}.json") for p in LATENCY_PASSES}
    sizing = load(d, "sizing.measure.json")
    sizing_published = load(d, "sizing.published.json")
    sizing_report = load(d, "sizing.report.json") or {}
    results = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "events": events,
        "expected_outputs": expected["counts"],
        "systems": systems,
        "latency": latency,
        "sizing": {
            "records": sizing_published and sizing_published["events"],
            "seconds": sizing and sizing["seconds"],
            "peak_rss_mb": sizing and sizing["peak_rss_mb"],
            "finished": bool(sizing) and sizing["exit_code"] == 0,
            "reservation_records": sizing_report.get("reservations"),
            "forced_commands": sizing_report.get("forced_commands"),
        },
    }
    rate = lambda s: (systems.get(s) or {}).get("events_per_s")  # noqa: E731
    ratios = {}
    if rate("orderfold") and rate("ceiling"):
        ratios["orderfold / ceiling"] = rate("orderfold") / rate("ceiling")
    for peer in ("quixstreams", "faust"):
        if rate("orderfold") and rate(peer):
            ratios[f"orderfold / {peer}"] = rate("orderfold") / rate(peer)
    results["ratios"] = ratios
    json.dump(results, open(os.path.join(d, "results.json"), "w"), indent=2)
    chart(d, systems, latency)
    section = markdown(results)
    print(section)
    text = open(doc).read() if os.path.exists(doc) else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + "\n" + section + "\n" + END + rest.split(END, 1)[1]
        open(doc, "w").write(text)


def fetch_wait_ms(name):
    """The clients' fetch.wait.max.ms in latency pass NAME: 10, or librdkafka's default 500."""
    return 10 if name.endswith("-fetch10") else 500


def pass_label(name, l):
    fetch = "fetch.wait.max.ms 10" if fetch_wait_ms(name) == 10 else "librdkafka defaults"
    return f"{l['rate_per_s']:,}/s, {fetch}"


def fmt(v, spec=",.0f"):
    return "n/a" if v is None else format(v, spec)


def markdown(r):
    m = r["machine"]
    lines = [
        f"Reported {r['measured_at']} from a run on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB,"
        f" Linux {m['kernel']}; tansu 0.6.0 with sqlite storage (its header table indexed, its"
        f" housekeeping once a day: see \"The broker\"), a fresh broker per system;"
        f" {r['events']:,} events (seed 42).",
        "",
        "| system | correct outputs | events/s | wall s | CPU s per million events | peak RSS MB | broker CPU s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s, v in r["systems"].items():
        lines.append(
            f"| {LABELS[s]} | {'yes' if v['correct'] else 'NO: time not counted'} |"
            f" {fmt(v['events_per_s'])} | {v['seconds']:.1f} | {v['cpu_seconds_per_million']:.1f} |"
            f" {v['peak_rss_mb']:.0f} | {fmt(v['broker_cpu_seconds'], '.0f')} |")
    lines += ["", "| ratio | value | goal |", "|---|---:|---:|"]
    goals = {"orderfold / ceiling": ">= 0.8", "orderfold / quixstreams": ">= 10"}
    for k, v in r["ratios"].items():
        lines.append(f"| {k} | {v:.2f} | {goals.get(k, '')} |")
    lines += ["", "End-to-end latency, orderfold live, `at_least_once`, paced load"
              " (tansu memory storage; milliseconds from handing the input to the producer to a"
              " consumer reading the output):", "",
              "| load | output | samples | p50 | p99 | p99.9 |", "|---|---|---:|---:|---:|---:|"]
    for name_, l in r["latency"].items():
        if not l:
            continue
        achieved = l["sent"] / l["send_seconds"]
        for key, name in (("alerts", "oversell alert"), ("tracking", "tracking status"),
                          ("broker_hop", "broker hop alone (baseline)")):
            p = l[key]
            lines.append(f"| {pass_label(name_, l)} (sent {achieved:,.0f}/s) | {name} |"
                         f" {p['count']:,} | {p['p50_ms']:.1f} | {p['p99_ms']:.1f} |"
                         f" {p['p999_ms']:.1f} |")
    z = r["sizing"]
    if z["peak_rss_mb"] is not None:
        lines += ["", f"Seed sizing (bench/seed-sizing.toml: {z['records']:,} records, 1,000,000"
                  f" SKUs, 1,000 reservations/s of event time with a 300 s TTL; {fmt(z['reservation_records'])}"
                  f" reservation records, active and released, at the end): peak RSS"
                  f" **{z['peak_rss_mb']:.0f} MB** (goal < 512 MB), {z['seconds']:.0f} s,"
                  f" {fmt(z['forced_commands'])} commands forced ahead of the watermark"
                  + ("." if z["finished"] else ", and the run had not finished: stopped at the deadline"
                     " or failed, so the peak is of the part it processed.")]
    lines += ["", "![throughput and latency](bench/results/chart.png)"]
    return "\n".join(lines)


def chart(d, systems, latency):
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [s for s in systems if systems[s]["events_per_s"]]
    a.bar([LABELS[s].replace(" ", "\n", 1) for s in names], [systems[s]["events_per_s"] for s in names],
          color=[COLORS[s] for s in names])
    a.set_ylabel("events/s (1,000,000-event log)")
    a.set_title("Throughput, same log, same broker build")
    a.tick_params(axis="x", labelsize=8)
    qs = ("p50_ms", "p99_ms", "p999_ms")
    width = 0.25
    rates = [r for r, l in latency.items() if l]
    for i, q in enumerate(qs):
        b.bar([x + i * width for x in range(len(rates))],
              [latency[r]["alerts"][q] for r in rates], width, label=f"alert {q[:-3]}")
    b.plot([x + width for x in range(len(rates))], [latency[r]["broker_hop"]["p99_ms"] for r in rates],
           "k_", markersize=30, label="broker hop p99")
    b.set_xticks([x + width for x in range(len(rates))],
                 [f"{latency[r]['rate_per_s']:,}/s\nfetch wait {fetch_wait_ms(r)} ms"
                  for r in rates], fontsize=7)
    b.set_yscale("log")
    b.set_ylabel("ms, input sent to alert consumed")
    b.set_title("orderfold end-to-end latency (at_least_once)")
    b.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(os.path.join(d, "chart.png"), dpi=110)


if __name__ == "__main__":
    main()
