//! Process-level tests on a real Kafka-compatible broker (tansu, sqlite storage, started by
//! `scripts/tansu`): the `orderfold` binary runs in a child process, is killed and restarted,
//! and its outputs and state are compared with the broker-free driver's on the same log.
//! `scripts/tansu install` (which `scripts/test` runs) must have built tansu first.

mod broker;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use orderfold::config::Config;
use rand::{Rng, SeedableRng};

/// A tansu broker in its own directory, stopped by its PID when dropped.
struct Tansu {
    dir: tempfile::TempDir,
    addr: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Tansu {
    fn start() -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(repo().join("scripts/tansu"))
            .arg("start")
            .arg(dir.path())
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/tansu");
        assert!(
            out.status.success(),
            "scripts/tansu start failed (run scripts/tansu install first)"
        );
        let addr = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Tansu { dir, addr }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/tansu"))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn orderfold(config_file: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orderfold"));
    c.env("ORDERFOLD_CONFIG", config_file)
        .env("RUST_LOG", "orderfold=info");
    c
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A broker with the topics created and a workload produced, both by the binary's commands.
struct Setup {
    tansu: Tansu,
    state: tempfile::TempDir,
    config: Config,
    config_file: PathBuf,
    records: Vec<orderfold::generate::Generated>,
}

const ORDER_PARTITIONS: u32 = 3;
const SKU_PARTITIONS: u32 = 2;

fn setup(seed: u64, orders: usize) -> Setup {
    let tansu = Tansu::start();
    let state = tempfile::tempdir().unwrap();
    let config = broker::config(&tansu.addr, state.path(), ORDER_PARTITIONS, SKU_PARTITIONS);
    let config_file = state.path().join("orderfold.toml");
    broker::write_config(&config, &config_file);
    check(
        orderfold(&config_file)
            .args(["topics", "create"])
            .output()
            .unwrap(),
        "topics create",
    );
    let (spec, records) = broker::workload(seed, orders);
    check(
        orderfold(&config_file)
            .args(["generate", "--kafka"])
            .args(["--seed", &spec.seed.to_string()])
            .args(["--orders", &spec.orders.to_string()])
            .args(["--skus", &spec.skus.to_string()])
            .output()
            .unwrap(),
        "generate --kafka",
    );
    Setup {
        tansu,
        state,
        config,
        config_file,
        records,
    }
}

/// The `processed_this_run` of a run's JSON report on its last stdout line.
fn processed(stdout: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().expect("a report line");
    let report: serde_json::Value = serde_json::from_str(line).expect("a JSON report");
    report["processed_this_run"].as_u64().unwrap()
}

/// Waits for a child to exit, up to `limit`; kills it and fails past that.
fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("orderfold did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `run` and returns once it has committed processed records (its JSON log says so),
/// so a signal sent after this lands while it is processing, not while it starts.
fn spawn_run(config_file: &Path, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = orderfold(config_file)
        .env("RUST_LOG", "orderfold=debug")
        .env("ORDERFOLD_LOG_FORMAT", "json")
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let limit = Duration::from_secs(120);
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            panic!("orderfold committed no progress within {limit:?}");
        };
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let fields = &entry["fields"];
        if fields["message"] == "committed" && fields["processed"].as_u64().unwrap_or(0) > 0 {
            break;
        }
    }
    (child, rx)
}

#[test]
fn a_process_run_on_tansu_equals_the_broker_free_driver() {
    let s = setup(21, 3_000);
    let out = check(
        orderfold(&s.config_file)
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "run --until-end",
    );
    assert_eq!(
        processed(&out.stdout),
        broker::order_stage_records(&s.records)
    );
    // `inspect` reads the state the run left.
    let all = check(
        orderfold(&s.config_file)
            .args(["inspect", "all"])
            .output()
            .unwrap(),
        "inspect all",
    );
    let want = broker::expected(&s.records, &s.config, ORDER_PARTITIONS, SKU_PARTITIONS);
    assert_eq!(
        String::from_utf8_lossy(&all.stdout).lines().count(),
        want.skus.len() + want.orders.len()
    );
    let got = broker::actual(&s.config, false);
    broker::assert_same(&got, &want);
    drop(s.tansu);
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_repeats_only_identical_outputs() {
    // About 200,000 events.
    let s = setup(33, 41_500);
    assert!(s.records.len() >= 200_000, "{} events", s.records.len());
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut kills = 0;
    while kills < 5 {
        let (mut child, _log) = spawn_run(&s.config_file, &["--until-end"]);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1_500)));
        if child.try_wait().unwrap().is_some() {
            panic!("the run finished before its kill; the workload is too small to test crashes");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
    }
    let out = check(
        orderfold(&s.config_file)
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "the run after the kills",
    );
    assert!(processed(&out.stdout) < broker::order_stage_records(&s.records));
    let want = broker::expected(&s.records, &s.config, ORDER_PARTITIONS, SKU_PARTITIONS);
    let got = broker::actual(&s.config, true);
    broker::assert_same(&got, &want);
    drop(s.state);
}

#[test]
fn sigterm_commits_and_exits_in_time_and_nothing_is_processed_twice() {
    let s = setup(45, 12_000);
    let total = broker::order_stage_records(&s.records);
    // Live mode, as the service runs; no wall-clock advance, so results depend on input alone.
    let (mut child, _log) = spawn_run(&s.config_file, &[]);
    let started = Instant::now();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let timeout = Duration::from_millis(s.config.runtime.shutdown_timeout_ms);
    let status = wait_exit(&mut child, timeout + Duration::from_secs(5));
    assert!(status.success(), "SIGTERM exit status {status:?}");
    assert!(started.elapsed() < timeout);
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let first = processed(&stdout);
    assert!(first > 0, "the live run processed nothing before SIGTERM");

    let out = check(
        orderfold(&s.config_file)
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "the run after SIGTERM",
    );
    // Every order-stage record was processed exactly once over the two runs.
    assert_eq!(first + processed(&out.stdout), total);
    let want = broker::expected(&s.records, &s.config, ORDER_PARTITIONS, SKU_PARTITIONS);
    let got = broker::actual(&s.config, false);
    broker::assert_same(&got, &want);
}

#[test]
fn a_topic_layout_with_different_partition_counts_exits_non_zero_naming_the_topics() {
    let tansu = Tansu::start();
    let state = tempfile::tempdir().unwrap();
    let config = broker::config(&tansu.addr, state.path(), 2, 2);
    let file = state.path().join("orderfold.toml");
    broker::write_config(&config, &file);
    check(
        orderfold(&file)
            .args(["topics", "create"])
            .output()
            .unwrap(),
        "topics create",
    );
    // A payments topic with three partitions beside orders and logistics with two.
    let mut wrong = config.clone();
    wrong.topics.payments = format!("{}-wide", config.topics.payments);
    wrong.topics.order_partitions = 3;
    let wrong_file = state.path().join("wrong.toml");
    broker::write_config(&wrong, &wrong_file);
    // `topics create` makes the missing topic, then reports the mismatch it sees.
    for args in [&["topics", "create"][..], &["run", "--until-end"][..]] {
        let out = orderfold(&wrong_file).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} accepted the layout");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&wrong.topics.payments), "{args:?}: {err}");
        assert!(err.contains(&wrong.topics.orders), "{args:?}: {err}");
    }
}
