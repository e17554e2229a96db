//! The `orderfold` command line. It owns argument parsing and the human-readable output of
//! each command; the work is done by the library.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use orderfold::codec::Codec;
use orderfold::config::Config;
use orderfold::driver::topics;
use orderfold::event::{AlertKind, OversellAlert};
use orderfold::generate::{generate, Generated, WorkloadSpec};
use orderfold::inspect::LocalState;
use orderfold::kafka::{self, EndOffsets, TopicNames};
use orderfold::metrics::Metrics;
use orderfold::replay;
use orderfold::runtime::{self, Mode, RunReport, Shutdown, Status};
use orderfold::simulate::{simulate, SimulateOptions};
use orderfold::verify;
use rdkafka::mocking::MockCluster;

/// RocksDB and the fold allocate many small, short-lived buffers; mimalloc handles that
/// pattern markedly better than glibc's allocator (see the README's benchmark notes).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "orderfold",
    version,
    about = "Event-sourced order, payment, logistics and inventory fold"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "ORDERFOLD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// The service: one member of the consumer group, until SIGTERM or SIGINT.
    Run {
        /// Config file (see config/orderfold.toml); ORDERFOLD_* variables override it.
        #[arg(long, env = "ORDERFOLD_CONFIG")]
        config: Option<PathBuf>,
        /// Process the input present at startup, end every task at the end of input, commit
        /// and exit (a bounded run, one instance; no wall-clock advance).
        #[arg(long)]
        until_end: bool,
    },
    /// Create every topic orderfold reads or writes that does not exist yet.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Print the state of one key from this machine's task state.
    Inspect {
        /// Config file naming state.dir; may follow the subcommand.
        #[arg(long, env = "ORDERFOLD_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        what: InspectWhat,
    },
    /// Run the broker-free topology over a JSON-lines log; write outputs and final state as JSON lines.
    Simulate {
        /// Input: one `{"topic": ..., "key": ..., "value": {...}}` per line.
        #[arg(long)]
        input: PathBuf,
        /// Directory for reservation-expiry.jsonl, tracking-status.jsonl, oversell-alerts.jsonl,
        /// dlq.jsonl, state-skus.jsonl and state-orders.jsonl.
        #[arg(long)]
        out: PathBuf,
        /// Partitions per stage.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Override the reservation TTL (default 300000 ms).
        #[arg(long)]
        reservation_ttl_ms: Option<i64>,
        /// Override the orphan TTL (default 3600000 ms).
        #[arg(long)]
        orphan_ttl_ms: Option<i64>,
        /// Config file for the rest of the rules and limits.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Keep task state here instead of a temporary directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Generate a seeded flash-sale workload: to Kafka with --kafka, else as JSON lines (the
    /// `simulate` input format). The same seed and options give the same records.
    Generate {
        #[command(flatten)]
        workload: WorkloadArgs,
        /// Produce to the topics of --config's brokers instead of writing JSON lines.
        #[arg(long)]
        kafka: bool,
        /// With --kafka: records per second of wall-clock time (default: as fast as the
        /// broker takes them).
        #[arg(long)]
        produce_rate_per_s: Option<u64>,
        #[arg(long, env = "ORDERFOLD_CONFIG")]
        config: Option<PathBuf>,
        /// JSON-lines output file; standard output if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Replay the log from a start to the end offsets it has now, into fresh state under its
    /// own application id (a bounded run, no wall-clock advance), optionally into prefixed
    /// output topics; with --verify, compare the result with production's.
    Replay(ReplayArgs),
    /// Return an application id to the start: rewind its group offsets, delete its local state
    /// and its internal topics (created again, empty). Refused while the group has members.
    Reset {
        #[arg(long, env = "ORDERFOLD_CONFIG")]
        config: Option<PathBuf>,
        /// `earliest`, or a record timestamp in epoch milliseconds.
        #[arg(long, default_value = "earliest")]
        to: String,
        /// Print what would be done and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Measure end-to-end events/s on the configured broker against its raw ceiling (consume
    /// the inputs and produce the same bytes back), both in this run.
    Bench(BenchArgs),
    /// Zero setup: an in-process Kafka (librdkafka's mock cluster), topics created, a flash
    /// sale generated and processed, and a summary of what happened.
    Demo {
        #[arg(long, default_value_t = 50_000)]
        orders: usize,
        /// Partitions per stage (default: one per 12,500 orders, at least 2; the mock
        /// cluster keeps at most 5 MiB per partition).
        #[arg(long)]
        partitions: Option<u32>,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The production config: brokers, input topics, rules. The replay derives its own.
    #[arg(long, env = "ORDERFOLD_CONFIG")]
    config: Option<PathBuf>,
    /// `earliest`, or a record timestamp in epoch milliseconds.
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Start offsets instead: JSON `{"topic": {"partition": offset}}`; partitions not named
    /// start at their beginning.
    #[arg(long, conflicts_with = "from")]
    from_offsets: Option<PathBuf>,
    /// Write the outputs to `<prefix><topic>` instead of the production output topics.
    #[arg(long)]
    output_prefix: Option<String>,
    /// The replay's application id (its group, internal topics and state directory). Default:
    /// `<production id>-replay-<unix seconds>`.
    #[arg(long)]
    application_id: Option<String>,
    /// Where the replay's state goes (default: the config's state.dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// After the replay, compare its outputs per key with the production output topics and
    /// its final state with --expected-state (or this machine's production state); print the
    /// first difference and exit non-zero unless identical.
    #[arg(long, requires = "output_prefix")]
    verify: bool,
    /// `inspect all` output of the production instances, for --verify.
    #[arg(long, requires = "verify")]
    expected_state: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Config naming the brokers; topic names and the application id get a fresh suffix.
    #[arg(long, env = "ORDERFOLD_CONFIG")]
    config: Option<PathBuf>,
    /// Orders to generate: 373,000 gives about 1,000,000 events (999,892 with seed 42).
    #[arg(long, default_value_t = 373_000)]
    orders: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Which pass to run. scripts/bench runs each on a fresh broker, because tansu's sqlite
    /// storage slows down as it fills and whichever ran second would pay for the first.
    #[arg(long, value_enum, default_value_t = BenchPhase::Both)]
    phase: BenchPhase,
    /// Keys in state for `--phase restore` (half orders, half SKUs).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// The workload's shape in full (TOML, as `generate --spec`), for the side-by-side phases;
    /// --orders and --seed then do not apply.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// For `--phase check`: the counts `--phase expect` wrote.
    #[arg(long)]
    expected: Option<PathBuf>,
    /// For `--phase latency`: input records per second, paced.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// For `--phase latency`: how long the paced load runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchPhase {
    Ceiling,
    Orderfold,
    /// Ceiling then orderfold on one broker.
    Both,
    /// The raw consume ceiling: read the inputs, do nothing with them.
    Consume,
    /// orderfold as the live service (a group member) until it has processed the log.
    Live,
    /// Restore speed and time-to-ready after a crash, on changelogs of `--keys` keys.
    Restore,
    /// The cost of metrics: bounded passes with metrics on and off, alternating, on the
    /// in-process mock cluster (the cost is the client's CPU; --config is not used).
    Metrics,
    /// What the broker-free driver emits for the log, as counts by distinct event id (JSON on
    /// stdout); needs no broker. The gate every measured system must pass.
    Expect,
    /// Creates the config's topics and publishes the log to them under their own names, for
    /// a system under test to process.
    Publish,
    /// The raw ceiling on the published log: consume its inputs, produce the same bytes.
    Copy,
    /// Counts the output topics by distinct event id and compares them with --expected;
    /// fails when they differ.
    Check,
    /// orderfold as the live service under a paced load of --rate records/s: end-to-end
    /// latency from handing an input to the producer to a consumer seeing its output.
    Latency,
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create the input, output and internal topics with the partition counts of the config.
    Create {
        #[arg(long, env = "ORDERFOLD_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum InspectWhat {
    /// One SKU: stock, reservations.
    Sku { id: String },
    /// One order: its state and tracking.
    Order { id: String },
    /// Every SKU, then every order, one JSON object per line.
    All,
}

/// The workload's shape; --spec reads every field of it from a TOML file, the flags override.
#[derive(clap::Args)]
struct WorkloadArgs {
    /// TOML file with any WorkloadSpec fields (see src/generate.rs).
    #[arg(long)]
    spec: Option<PathBuf>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    orders: Option<usize>,
    #[arg(long)]
    skus: Option<usize>,
    /// Event-time rate of new orders.
    #[arg(long)]
    orders_per_sec: Option<u64>,
    #[arg(long)]
    duplicate_ratio: Option<f64>,
    #[arg(long)]
    out_of_order_scan_ratio: Option<f64>,
    #[arg(long)]
    malformed_ratio: Option<f64>,
    #[arg(long)]
    payment_failure_ratio: Option<f64>,
    #[arg(long)]
    abandon_ratio: Option<f64>,
    /// Of captures: paid after the reservation expired.
    #[arg(long)]
    late_capture_ratio: Option<f64>,
    /// Of orders refused for want of stock: captured anyway (the rest are cancelled).
    #[arg(long)]
    refused_capture_ratio: Option<f64>,
}

impl WorkloadArgs {
    fn spec(&self) -> anyhow::Result<WorkloadSpec> {
        let mut spec = read_spec(self.spec.as_ref())?;
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { spec.$f = v; })* };
        }
        set!(
            seed,
            orders,
            skus,
            orders_per_sec,
            duplicate_ratio,
            out_of_order_scan_ratio,
            malformed_ratio,
            payment_failure_ratio,
            abandon_ratio,
            late_capture_ratio,
            refused_capture_ratio
        );
        Ok(spec)
    }
}

/// The workload spec in a TOML file (any WorkloadSpec fields), or the default one.
fn read_spec(path: Option<&PathBuf>) -> anyhow::Result<WorkloadSpec> {
    Ok(match path {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => WorkloadSpec::default(),
    })
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(Config::load_with_env(path.map(PathBuf::as_path))?)
}

/// The config of a command that talks to Kafka, after the brokers have answered it: a wrong
/// address or login fails here with its reason instead of as a timeout deeper in.
fn load_connected(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    let config = load_config(path)?;
    kafka::connect(&config)?;
    Ok(config)
}

/// A small tokio runtime for the admin client's futures and the signal handlers; the poll
/// loop itself is synchronous and runs on the calling thread.
fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// SIGTERM and SIGINT ask the runtime to finish its batch, commit and leave the group.
fn on_signals(rt: &tokio::runtime::Runtime, shutdown: Shutdown) {
    rt.spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = term => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutdown requested: committing the current batch");
        shutdown.request();
    });
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, until_end } => {
            let config = load_connected(config.as_ref())?;
            let rt = tokio_runtime()?;
            let shutdown = Shutdown::default();
            on_signals(&rt, shutdown.clone());
            let mode = if until_end {
                Mode::UntilEnd
            } else {
                Mode::Live
            };
            let status = Arc::new(Status::new(Metrics::new(config.metrics.enabled)?));
            if let Some(listener) = orderfold::http::bind(&config.http)
                .with_context(|| format!("binding http.bind {}", config.http.bind))?
            {
                let (http, status) = (config.http.clone(), status.clone());
                tracing::info!(bind = %http.bind, "serving /metrics, /healthz, /readyz, /state");
                rt.spawn(async move {
                    if let Err(e) = orderfold::http::serve(listener, &http, status).await {
                        tracing::error!(error = %e, "the HTTP server stopped");
                    }
                });
            }
            let report = runtime::run(&config, mode, shutdown, status)?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Topics {
            action: TopicsAction::Create { config },
        } => {
            let config = load_connected(config.as_ref())?;
            let created = tokio_runtime()?.block_on(kafka::create_topics(&config))?;
            for t in &created {
                println!("created {t}");
            }
            let layout = kafka::check_layout(&config)?;
            println!(
                "topics ready: order stage {} partitions, SKU stage {} partitions",
                layout.order_partitions, layout.sku_partitions
            );
        }
        Command::Inspect { config, what } => {
            inspect(&load_config(config.as_ref())?, &what)?;
        }
        Command::Simulate {
            input,
            out,
            partitions,
            reservation_ttl_ms,
            orphan_ttl_ms,
            config,
            state_dir,
        } => {
            let mut config = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            if let Some(ttl) = reservation_ttl_ms {
                config.rules.reservation_ttl_ms = ttl;
            }
            if let Some(ttl) = orphan_ttl_ms {
                config.rules.orphan_ttl_ms = ttl;
            }
            config.validate()?;
            let tmp = tempfile::tempdir().context("creating a temporary state directory")?;
            let state = state_dir.unwrap_or_else(|| tmp.path().to_path_buf());
            let opts = SimulateOptions {
                input,
                out: out.clone(),
                partitions: partitions.max(1),
                batch_records: config.limits.commit_records_max,
                config,
            };
            let s = simulate(&opts, &state)?;
            println!(
                "{} lines: {} expiries, {} tracking updates, {} oversell alerts, {} dead letters, {} still parked; {} skus and {} orders in state; written to {}",
                s.lines, s.expiries, s.tracking_updates, s.alerts, s.dead_letters, s.parked, s.skus, s.orders, out.display()
            );
        }
        Command::Generate {
            workload,
            kafka: to_kafka,
            produce_rate_per_s,
            config,
            out,
        } => {
            let spec = workload.spec()?;
            let records = generate(&spec);
            if to_kafka {
                let config = load_connected(config.as_ref())?;
                publish(&config, &records, produce_rate_per_s, true)?;
                println!(
                    "produced {} records to {}",
                    records.len(),
                    config.kafka.bootstrap_servers
                );
                return Ok(());
            }
            let mut w: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            for r in &records {
                writeln!(w, "{}", r.to_json_line())?;
            }
            w.flush()?;
        }
        Command::Demo {
            orders,
            partitions,
            seed,
        } => demo(orders, partitions, seed)?,
        Command::Bench(args) => bench(&args)?,
        Command::Replay(args) => replay(&args)?,
        Command::Reset {
            config,
            to,
            dry_run,
        } => {
            let config = load_connected(config.as_ref())?;
            let plan = replay::plan_reset(&config, &replay::Start::parse(&to)?)?;
            print!("{plan}");
            if dry_run {
                println!("dry run: nothing changed");
            } else {
                replay::apply_reset(&config, &plan)?;
                println!("reset done");
            }
        }
    }
    Ok(())
}

fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if args.phase == BenchPhase::Metrics {
        return bench_metrics(args);
    }
    if matches!(
        args.phase,
        BenchPhase::Expect | BenchPhase::Publish | BenchPhase::Copy | BenchPhase::Check
    ) {
        return bench_side_by_side(args);
    }
    let mut config = load_connected(args.config.as_ref())?;
    let tag = format!(
        "bench{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    suffix_topics(&mut config, &tag);
    config.kafka.application_id = format!("{}-{tag}", config.kafka.application_id);
    let state = tempfile::tempdir()?;
    config.state.dir = state.path().to_path_buf();
    config.runtime.wall_clock_advance = false;
    tokio_runtime()?.block_on(kafka::create_topics(&config))?;
    if args.phase == BenchPhase::Restore {
        let r = orderfold::bench::restore(&config, args.keys)?;
        eprintln!(
            "restore: {} keys; plain read {:.0} records/s; restore onto an empty disk {:.0} records/s \
             ({:.2} of the read); ready {:.2} s after a crash with local state ({} unfinished records read)",
            r.keys,
            r.consume.events_per_sec(),
            r.restore.events_per_sec(),
            r.restore.events_per_sec() / r.consume.events_per_sec().max(1e-9),
            r.ready_after_restart_seconds,
            r.tail_records
        );
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    if args.phase == BenchPhase::Latency {
        return bench_latency(args, config);
    }
    let spec = WorkloadSpec {
        seed: args.seed,
        orders: args.orders,
        ..WorkloadSpec::default()
    };
    let records = generate(&spec);
    eprintln!(
        "bench: {} events on {}, {} + {} partitions",
        records.len(),
        config.kafka.bootstrap_servers,
        config.topics.order_partitions,
        config.topics.sku_partitions
    );
    let ends = publish(&config, &records, None, true)?;
    let limit = Duration::from_secs(3_600);
    let mut result = serde_json::json!({ "events": records.len() });
    if args.phase == BenchPhase::Consume || args.phase == BenchPhase::Live {
        let (name, m) = if args.phase == BenchPhase::Consume {
            ("consume", orderfold::bench::consume(&config, &ends, limit)?)
        } else {
            ("live", orderfold::bench::live(&config, &ends)?)
        };
        eprintln!(
            "{name:<9} {:>9.0} events/s  {:.1} CPU-s per million",
            m.events_per_sec(),
            m.cpu_seconds_per_million()
        );
        result[format!("{name}_events_per_sec")] = m.events_per_sec().into();
        result[name] = serde_json::to_value(&m)?;
        println!("{result}");
        return Ok(());
    }
    if args.phase != BenchPhase::Orderfold {
        let ceiling = orderfold::bench::ceiling(&config, &ends, limit)?;
        eprintln!(
            "ceiling   {:>9.0} events/s  {:.1} CPU-s per million",
            ceiling.events_per_sec(),
            ceiling.cpu_seconds_per_million()
        );
        result["ceiling_events_per_sec"] = ceiling.events_per_sec().into();
        result["ceiling"] = serde_json::to_value(&ceiling)?;
    }
    if args.phase != BenchPhase::Ceiling {
        let ours = orderfold::bench::orderfold(&config, &ends)?;
        eprintln!(
            "orderfold {:>9.0} events/s  {:.1} CPU-s per million",
            ours.events_per_sec(),
            ours.cpu_seconds_per_million()
        );
        result["orderfold_events_per_sec"] = ours.events_per_sec().into();
        result["orderfold"] = serde_json::to_value(&ours)?;
    }
    println!("{result}");
    Ok(())
}

/// orderfold live under a paced load of `--rate` records/s for `--seconds`: the workload's
/// first records, with a time line that keeps pace with the wall clock, each restamped with
/// the wall clock as it is sent. Records per order depend on how many orders the checkout
/// refuses, so a first draft of the workload measures them and the second is sized by it.
fn bench_latency(args: &BenchArgs, mut config: Config) -> anyhow::Result<()> {
    let records = (args.rate * args.seconds) as usize;
    let base = read_spec(args.spec.as_ref())?;
    // A few orders to spare, so the truncated log is full to the end of the time line.
    let sized = |records_per_order: f64| WorkloadSpec {
        seed: args.seed,
        orders: (1.02 * records as f64 / records_per_order) as usize + 1,
        orders_per_sec: ((args.rate as f64 / records_per_order) as u64).max(1),
        ..base.clone()
    };
    let draft = sized(4.0);
    let records_per_order = generate(&draft).len() as f64 / draft.orders.max(1) as f64;
    let spec = sized(records_per_order.max(0.1));
    let mut workload = generate(&spec);
    workload.truncate(records);
    config.runtime.wall_clock_advance = true;
    config.http.bind = String::new();
    eprintln!(
        "latency: {} records at {} records/s on {}, at_least_once",
        workload.len(),
        args.rate,
        config.kafka.bootstrap_servers
    );
    let report = orderfold::latency::latency(&config, workload, args.rate)?;
    eprintln!(
        "latency at {}/s (achieved {:.0}/s): alerts p50 {:.1} ms p99 {:.1} ms p999 {:.1} ms ({} samples); \
         tracking p50 {:.1} p99 {:.1} p999 {:.1} ({}); broker hop p50 {:.1} p99 {:.1} p999 {:.1}",
        report.rate_per_s,
        report.sent as f64 / report.send_seconds.max(1e-9),
        report.alerts.p50_ms,
        report.alerts.p99_ms,
        report.alerts.p999_ms,
        report.alerts.count,
        report.tracking.p50_ms,
        report.tracking.p99_ms,
        report.tracking.p999_ms,
        report.tracking.count,
        report.broker_hop.p50_ms,
        report.broker_hop.p99_ms,
        report.broker_hop.p999_ms,
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The side-by-side benchmark's steps, each a process of its own so that scripts/bench can
/// measure every system the same way: the log under the config's own topic names, the
/// ceiling on it, and the correctness gate.
fn bench_side_by_side(args: &BenchArgs) -> anyhow::Result<()> {
    let records = || -> anyhow::Result<Vec<Generated>> {
        let mut spec = read_spec(args.spec.as_ref())?;
        if args.spec.is_none() {
            spec.seed = args.seed;
            spec.orders = args.orders;
        }
        Ok(generate(&spec))
    };
    match args.phase {
        BenchPhase::Expect => {
            let config = load_config(args.config.as_ref())?;
            let records = records()?;
            let expected = orderfold::compare::expected(&config, &records)?;
            println!(
                "{}",
                serde_json::json!({
                    "events": records.len(),
                    "counts": expected.counts,
                    "end_time_ms": expected.end_time_ms,
                    "single_object_headers": orderfold::compare::single_object_headers()?,
                })
            );
        }
        BenchPhase::Publish => {
            let config = load_connected(args.config.as_ref())?;
            let records = records()?;
            tokio_runtime()?.block_on(kafka::create_topics(&config))?;
            let ends = publish(&config, &records, None, false)?;
            let ends: BTreeMap<String, i64> = ends
                .into_iter()
                .map(|((t, p), e)| (format!("{t}/{p}"), e))
                .collect();
            println!(
                "{}",
                serde_json::json!({ "events": records.len(), "ends": ends })
            );
        }
        BenchPhase::Copy => {
            let config = load_connected(args.config.as_ref())?;
            let names = TopicNames::from_config(&config);
            let ends = orderfold::compare::end_offsets(&config, &names.external_inputs())?;
            let m = orderfold::bench::ceiling(&config, &ends, Duration::from_secs(3_600))?;
            println!("{}", serde_json::to_string(&m)?);
        }
        BenchPhase::Check => {
            let config = load_connected(args.config.as_ref())?;
            let path = args
                .expected
                .as_ref()
                .context("--phase check needs --expected FILE (from --phase expect)")?;
            let expected: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            )?;
            let expected: orderfold::compare::OutputCounts =
                serde_json::from_value(expected["counts"].clone())?;
            let observed = orderfold::compare::observed(&config, Duration::from_secs(600))?;
            let same = observed == expected;
            println!(
                "{}",
                serde_json::json!({ "same": same, "observed": observed, "expected": expected })
            );
            if !same {
                anyhow::bail!(
                    "the outputs differ from the driver's: observed {observed:?}, expected {expected:?}"
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// Gives every external topic of `config` the suffix `-{tag}`, so a benchmark pass starts on
/// empty topics of its own.
fn suffix_topics(config: &mut Config, tag: &str) {
    let t = &mut config.topics;
    for name in [
        &mut t.orders,
        &mut t.payments,
        &mut t.logistics,
        &mut t.inventory,
        &mut t.reservation_expiry,
        &mut t.tracking_status,
        &mut t.oversell_alerts,
    ] {
        *name = format!("{name}-{tag}");
    }
}

/// Passes of the same log with metrics on and off in turn (on, off, on, off, ...), each on fresh
/// topics and state of one mock cluster, so drift over the run falls on both sides equally.
/// Reports the median of each side and their ratio.
fn bench_metrics(args: &BenchArgs) -> anyhow::Result<()> {
    const PASSES_PER_SIDE: usize = 3;
    let spec = WorkloadSpec {
        seed: args.seed,
        orders: args.orders,
        ..WorkloadSpec::default()
    };
    let records = generate(&spec);
    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    eprintln!(
        "metrics cost: {} events, {PASSES_PER_SIDE} passes each with metrics on and off, 4 + 4 partitions, mock cluster",
        records.len()
    );
    let mut on = Vec::new();
    let mut off = Vec::new();
    for pass in 0..2 * PASSES_PER_SIDE {
        let enabled = pass % 2 == 0;
        let state = tempfile::tempdir()?;
        let mut config = Config::default();
        config.kafka.bootstrap_servers = cluster.bootstrap_servers();
        config.kafka.application_id = format!("metrics-bench-{pass}");
        config.state.dir = state.path().to_path_buf();
        config.runtime.wall_clock_advance = false;
        config.metrics.enabled = enabled;
        config.http.bind = String::new();
        suffix_topics(&mut config, &pass.to_string());
        kafka::create_on_mock(&cluster, &config)?;
        let ends = publish(&config, &records, None, false)?;
        let m = orderfold::bench::orderfold(&config, &ends)?;
        eprintln!(
            "metrics {:<3} {:>9.0} events/s  {:.2} CPU-s per million",
            if enabled { "on" } else { "off" },
            m.events_per_sec(),
            m.cpu_seconds_per_million()
        );
        if enabled {
            on.push(m);
        } else {
            off.push(m);
        }
    }
    let median = |ms: &[orderfold::bench::Measured], f: fn(&orderfold::bench::Measured) -> f64| {
        let mut v: Vec<f64> = ms.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (on_rate, off_rate) = (
        median(&on, |m| m.events_per_sec()),
        median(&off, |m| m.events_per_sec()),
    );
    let (on_cpu, off_cpu) = (
        median(&on, |m| m.cpu_seconds_per_million()),
        median(&off, |m| m.cpu_seconds_per_million()),
    );
    eprintln!(
        "metrics on / off: throughput {:.3} (median {on_rate:.0} vs {off_rate:.0} events/s), \
         CPU per event {:.3} ({on_cpu:.2} vs {off_cpu:.2} CPU-s per million)",
        on_rate / off_rate.max(1e-9),
        on_cpu / off_cpu.max(1e-9)
    );
    println!(
        "{}",
        serde_json::json!({
            "events": records.len(),
            "on_events_per_sec": on_rate,
            "off_events_per_sec": off_rate,
            "throughput_ratio": on_rate / off_rate.max(1e-9),
            "on_cpu_seconds_per_million": on_cpu,
            "off_cpu_seconds_per_million": off_cpu,
            "cpu_ratio": on_cpu / off_cpu.max(1e-9),
            "on": on,
            "off": off,
        })
    );
    Ok(())
}

/// Produces generated records to the configured topics, with a progress bar when asked.
fn publish(
    config: &Config,
    records: &[Generated],
    rate_per_s: Option<u64>,
    show: bool,
) -> anyhow::Result<EndOffsets> {
    let codec = Codec::new()?;
    let names = TopicNames::from_config(config);
    let mut encoded = Vec::with_capacity(records.len());
    for r in records {
        let topic = names
            .external(r.topic)
            .with_context(|| format!("no topic for {}", r.topic))?;
        encoded.push((
            topic,
            r.key.as_deref().map(str::as_bytes),
            r.encode(&codec)?,
        ));
    }
    let bar = if show {
        bar(records.len() as u64, "publishing")
    } else {
        ProgressBar::hidden()
    };
    let ends = kafka::produce_all(
        config,
        encoded.iter().map(|(t, k, v)| (*t, *k, Some(v.as_slice()))),
        rate_per_s,
        |n| bar.set_position(n),
    )?;
    bar.finish_and_clear();
    Ok(ends)
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>12} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn inspect(config: &Config, what: &InspectWhat) -> anyhow::Result<()> {
    let state = LocalState::open(config)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match what {
        InspectWhat::Sku { id } => match state.sku(id)? {
            Some(view) => writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?,
            None => anyhow::bail!("sku {id} is not in this machine's state"),
        },
        InspectWhat::Order { id } => match state.order(id)? {
            Some(view) => writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?,
            None => anyhow::bail!("order {id} is not in this machine's state"),
        },
        InspectWhat::All => {
            for s in state.skus()? {
                writeln!(out, "{}", serde_json::to_string(&s)?)?;
            }
            for o in state.orders()? {
                writeln!(out, "{}", serde_json::to_string(&o)?)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The demo's orders per partition by default. librdkafka's mock cluster keeps at most 5 MiB
/// per partition and deletes the oldest records past that, read or not; at about 140 bytes of
/// SKU commands per order, 12,500 orders per command partition stay well inside it. With
/// fewer partitions the SKU stage finds its next commands deleted and its consumer skips to
/// what is left (`auto.offset.reset = earliest`): the runtime does not yet stop on deleted
/// input (#22).
const DEMO_ORDERS_PER_PARTITION: usize = 12_500;

fn demo(orders: usize, partitions: Option<u32>, seed: u64) -> anyhow::Result<()> {
    let spec = WorkloadSpec {
        seed,
        orders,
        ..WorkloadSpec::default()
    };
    let partitions = partitions
        .unwrap_or_else(|| orders.div_ceil(DEMO_ORDERS_PER_PARTITION).clamp(2, 64) as u32)
        .max(1);
    println!(
        "orderfold demo: a flash sale of {orders} orders over {} SKUs ({} hot), {partitions} partitions per stage, on librdkafka's in-process mock cluster",
        spec.skus, spec.hot_skus
    );
    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    let state = tempfile::tempdir()?;
    let mut config = Config::default();
    config.kafka.bootstrap_servers = cluster.bootstrap_servers();
    config.kafka.application_id = "orderfold-demo".into();
    config.state.dir = state.path().to_path_buf();
    config.topics.order_partitions = partitions;
    config.topics.sku_partitions = partitions;
    kafka::create_on_mock(&cluster, &config)?;

    let records = generate(&spec);
    publish(&config, &records, None, true)?;
    let order_stage_records = records
        .iter()
        .filter(|r| r.topic != topics::INVENTORY)
        .count() as u64;

    let report = run_with_progress(&config, Mode::UntilEnd, None, order_stage_records)?;
    summarize(&config, &report, Some(orders))
}

/// A bounded run on a worker thread, with a progress bar over the order stage's records (rate
/// and ETA) and the SKU stage's count beside it.
fn run_with_progress(
    config: &Config,
    mode: Mode,
    start: Option<EndOffsets>,
    order_total: u64,
) -> anyhow::Result<RunReport> {
    let progress = Arc::new(Status::new(Metrics::new(config.metrics.enabled)?));
    std::thread::scope(|s| -> anyhow::Result<RunReport> {
        let worker = s.spawn(|| {
            runtime::run_from(config, mode, start, Shutdown::default(), progress.clone())
        });
        let bar = bar(order_total, "order stage");
        while !worker.is_finished() {
            bar.set_position(progress.order_records.load(Ordering::Relaxed));
            let restoring = progress.restoring_tasks.load(Ordering::Relaxed);
            bar.set_message(if restoring > 0 {
                format!("restoring {restoring} task(s)")
            } else {
                format!(
                    "SKU stage {} records",
                    progress.sku_records.load(Ordering::Relaxed)
                )
            });
            std::thread::sleep(Duration::from_millis(100));
        }
        bar.finish_and_clear();
        match worker.join() {
            Ok(r) => Ok(r?),
            Err(_) => anyhow::bail!("the runtime thread panicked"),
        }
    })
}

fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let base = load_connected(args.config.as_ref())?;
    let config = replay::replay_config(
        &base,
        args.application_id.as_deref(),
        args.output_prefix.as_deref(),
        args.state_dir.as_deref(),
    )?;
    let start = match &args.from_offsets {
        Some(file) => replay::Start::from_file(file)?,
        None => replay::Start::parse(&args.from)?,
    };
    tokio_runtime()?
        .block_on(kafka::create_topics(&config))
        .context("creating the replay's topics")?;
    let start_offsets = replay::start_offsets(&config, &start)?;
    let ends = replay::end_offsets(&config)?;
    let names = TopicNames::from_config(&config);
    let order_total: i64 = names
        .order_inputs()
        .iter()
        .flat_map(|t| ends.iter().filter(move |((topic, _), _)| topic == t))
        .map(|(k, end)| end - start_offsets.get(k).copied().unwrap_or(0))
        .sum();
    eprintln!(
        "replay {} as {} ({:?} to the end offsets now), outputs to {}, {}, {}; state in {}",
        base.kafka.application_id,
        config.kafka.application_id,
        start,
        names.reservation_expiry,
        names.tracking_status,
        names.oversell_alerts,
        config
            .state
            .dir
            .join(&config.kafka.application_id)
            .display()
    );
    let report = run_with_progress(
        &config,
        Mode::UntilOffsets(ends),
        Some(start_offsets),
        order_total.max(0) as u64,
    )
    .context("replay failed")?;
    summarize(&config, &report, None)?;
    if !args.verify {
        return Ok(());
    }
    if let Some(d) = verify::compare_outputs(&base, &config)? {
        anyhow::bail!("verify: outputs differ. First difference: {d}");
    }
    let expected = match &args.expected_state {
        Some(file) => verify::state_dump(file)?,
        None => verify::local_state(&base)?,
    };
    let actual = verify::local_state(&config)?;
    if let Some(d) = verify::compare_state(&expected, &actual) {
        anyhow::bail!("verify: final state differs. First difference: {d}");
    }
    println!(
        "verify: identical: every key of the three output topics, and {} SKUs and orders",
        actual.len()
    );
    Ok(())
}

/// The share of orders the seed's checkout, which reserved nothing, oversold (DOMAIN.md).
const SEED_OVERSOLD_SHARE: f64 = 0.032;

/// What a bounded run did, for an operator: `orders` is the number of orders in the log when
/// the caller knows it (the demo), which gives the oversold share beside the seed's baseline.
fn summarize(config: &Config, report: &RunReport, orders: Option<usize>) -> anyhow::Result<()> {
    let names = TopicNames::from_config(config);
    let inputs = names.external_inputs();
    let sum = |f: &dyn Fn(&orderfold::stage::Accounting) -> u64| -> u64 {
        inputs
            .iter()
            .filter_map(|t| report.accounting.get(*t))
            .map(f)
            .sum()
    };
    let events = sum(&|a| a.consumed);
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    for t in inputs {
        if let Some(a) = report.accounting.get(t) {
            for (k, v) in &a.dead_lettered {
                *dead.entry(k.clone()).or_default() += v;
            }
        }
    }
    let alerts = |k: AlertKind| report.alerts.get(k.label()).copied().unwrap_or(0);
    let codec = Codec::from_config(config)?;
    // Oversells per SKU, and the distinct orders that were sold without stock.
    let mut oversold: BTreeMap<String, usize> = BTreeMap::new();
    let mut oversold_orders = std::collections::BTreeSet::new();
    for r in kafka::read_to_end(config, &names.oversell_alerts)? {
        if let Some(a) = r
            .value
            .as_deref()
            .and_then(|v| codec.decode::<OversellAlert>(v).ok())
        {
            if a.kind == AlertKind::OVERSOLD {
                *oversold.entry(a.sku).or_default() += 1;
                oversold_orders.extend(a.order_id);
            }
        }
    }
    let mut top: Vec<_> = oversold.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let refused = alerts(AlertKind::RESERVATION_REJECTED);
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    if let Some(orders) = orders {
        println!("orders          {orders}");
    }
    println!("events          {events}");
    // Every reservation record began as a Reserve: accepted, or refused with an alert.
    println!(
        "reservations    {} accepted, {refused} refused (out of stock)",
        report.reservations.saturating_sub(refused)
    );
    println!("expiries        {}", report.expiries);
    println!("tracking        {}", report.tracking_updates);
    println!(
        "alerts          {} rejected, {} oversold, {} negative available",
        refused,
        alerts(AlertKind::OVERSOLD),
        alerts(AlertKind::NEGATIVE_AVAILABLE)
    );
    match orders {
        Some(orders) => println!(
            "oversold        {} orders, {:.2}% of orders (the seed's checkout without reservations: {:.1}%)",
            oversold_orders.len(),
            100.0 * oversold_orders.len() as f64 / orders.max(1) as f64,
            100.0 * SEED_OVERSOLD_SHARE
        ),
        None => println!("oversold        {} orders", oversold_orders.len()),
    }
    println!(
        "top oversold    {}",
        top.iter()
            .take(5)
            .map(|(s, n)| format!("{s} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("duplicates      {}", sum(&|a| a.duplicates));
    println!(
        "dead letters    {} ({})",
        dead.values().sum::<u64>(),
        dead.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "throughput      {:.0} events/s ({:.2} s end to end through Kafka, both stages)",
        events as f64 / secs,
        secs
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and the benchmark print their own summaries (the workload's malformed records
    // would each log a dead letter); the service logs what it does.
    let default_level = match cli.command {
        Command::Demo { .. } | Command::Bench(_) => "error",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderfold: {e:#}");
            ExitCode::FAILURE
        }
    }
}
