//! The `orderfold` command line. It owns argument parsing and the human-readable output of
//! each command; the work is done by the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderfold::config::Config;
use orderfold::driver::{topics, Driver, Topology};
use orderfold::event::AlertKind;
use orderfold::generate::{generate, WorkloadSpec};
use orderfold::simulate::{simulate, SimulateOptions};

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Write a seeded flash-sale workload as JSON lines (the `simulate` input format).
    Generate {
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 10_000)]
        orders: usize,
        #[arg(long, default_value_t = 1_000)]
        skus: usize,
        /// Output file; standard output if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Generate a flash sale, fold it, and print what happened.
    Demo {
        #[arg(long, default_value_t = 50_000)]
        orders: usize,
        #[arg(long, default_value_t = 2)]
        partitions: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate {
            input,
            out,
            partitions,
            reservation_ttl_ms,
            orphan_ttl_ms,
            config,
            state_dir,
        } => {
            let mut config = load_config(config.as_ref())?;
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
            seed,
            orders,
            skus,
            out,
        } => {
            let spec = WorkloadSpec {
                seed,
                orders,
                skus,
                ..WorkloadSpec::default()
            };
            let records = generate(&spec);
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
    }
    Ok(())
}

fn demo(orders: usize, partitions: u32, seed: u64) -> anyhow::Result<()> {
    let spec = WorkloadSpec {
        seed,
        orders,
        ..WorkloadSpec::default()
    };
    println!("orderfold demo: a flash sale of {orders} orders over {} SKUs ({} hot), {partitions} partitions per stage", spec.skus, spec.hot_skus);
    let records = generate(&spec);
    let tmp = tempfile::tempdir()?;
    let config = Config::default();
    let batch = config.limits.commit_records_max;
    let mut driver = Driver::open(tmp.path(), Topology::uniform(partitions), config)?;
    for r in &records {
        let value = r.encode(driver.codec())?;
        driver.pipe(r.topic, r.key.as_deref().map(str::as_bytes), Some(value))?;
    }
    let started = Instant::now();
    driver.finish(batch)?;
    let elapsed = started.elapsed().as_secs_f64();
    let acc = driver.accounting();
    let alerts = driver.alerts();
    let count = |k: AlertKind| alerts.iter().filter(|a| a.kind == k).count();
    let inputs: u64 = topics::INPUTS
        .iter()
        .map(|t| acc.get(*t).map_or(0, |a| a.consumed))
        .sum();
    let dups: u64 = topics::INPUTS
        .iter()
        .map(|t| acc.get(*t).map_or(0, |a| a.duplicates))
        .sum();
    let dead: u64 = topics::INPUTS
        .iter()
        .map(|t| acc.get(*t).map_or(0, |a| a.dead_lettered_total()))
        .sum();
    let reservations: usize = driver.skus()?.iter().map(|s| s.reservations.len()).sum();
    println!("events          {inputs}");
    println!("reservations    {reservations}");
    println!("expiries        {}", driver.expiries().len());
    println!("tracking        {}", driver.tracking_statuses().len());
    println!(
        "alerts          {} rejected, {} oversold, {} negative available",
        count(AlertKind::RESERVATION_REJECTED),
        count(AlertKind::OVERSOLD),
        count(AlertKind::NEGATIVE_AVAILABLE)
    );
    println!("duplicates      {dups}");
    println!("dead letters    {dead}");
    println!(
        "throughput      {:.0} events/s ({elapsed:.2} s, broker-free)",
        inputs as f64 / elapsed.max(1e-9)
    );
    let mut oversold: std::collections::BTreeMap<&str, usize> = Default::default();
    for a in alerts.iter().filter(|a| a.kind == AlertKind::OVERSOLD) {
        *oversold.entry(a.sku.as_str()).or_default() += 1;
    }
    let mut top: Vec<_> = oversold.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!(
        "top oversold    {}",
        top.iter()
            .take(5)
            .map(|(s, n)| format!("{s} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderfold: {e:#}");
            ExitCode::FAILURE
        }
    }
}
