//! Helpers for the process-level tests on a real broker: a tansu started by `scripts/tansu`
//! and stopped by its PID, the `orderfold` binary run as a child process, its JSON log and
//! report read back.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use orderfold::config::Config;
use orderfold::state::Stage;

/// A tansu broker in its own directory, stopped by its PID when dropped.
pub struct Tansu {
    pub dir: tempfile::TempDir,
    pub addr: String,
}

/// The checkout under test. Read when the test runs (cargo sets it for every test process):
/// the build cache is shared between checkouts at different paths, and cargo does not rebuild
/// a test binary that only moved, so the path compiled into it may name another checkout.
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

impl Tansu {
    pub fn start() -> Tansu {
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

pub fn orderfold(config_file: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orderfold"));
    c.env("ORDERFOLD_CONFIG", config_file)
        .env("RUST_LOG", "orderfold=info");
    c
}

pub fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `topics create` on a config file, which must succeed.
pub fn topics_create(config_file: &Path) {
    check(
        orderfold(config_file)
            .args(["topics", "create"])
            .output()
            .unwrap(),
        "topics create",
    );
}

/// `run --until-end` on a config file, which must succeed.
pub fn run_until_end(config_file: &Path) -> Output {
    check(
        orderfold(config_file)
            .args(["run", "--until-end"])
            .output()
            .unwrap(),
        "run --until-end",
    )
}

/// A broker with nothing on it, and a config file with two partitions per stage.
pub fn empty_broker() -> (Tansu, tempfile::TempDir, Config, PathBuf) {
    let tansu = Tansu::start();
    let state = tempfile::tempdir().unwrap();
    let config = super::config(&tansu.addr, state.path(), 2, 2);
    let file = state.path().join("orderfold.toml");
    super::write_config(&config, &file);
    (tansu, state, config, file)
}

/// A broker with the topics created and a workload produced, both by the binary's commands.
pub struct Setup {
    pub tansu: Tansu,
    pub state: tempfile::TempDir,
    pub config: Config,
    pub config_file: PathBuf,
    pub records: Vec<orderfold::generate::Generated>,
    pub seed: u64,
    pub orders: usize,
}

pub const ORDER_PARTITIONS: u32 = 3;
pub const SKU_PARTITIONS: u32 = 2;

pub fn setup(seed: u64, orders: usize) -> Setup {
    let s = setup_empty(seed, orders);
    check(generate(&s, None).output().unwrap(), "generate --kafka");
    s
}

/// `generate --kafka` of the setup's workload, at `rate_per_s` records per second if given.
pub fn generate(s: &Setup, rate_per_s: Option<u64>) -> Command {
    let spec = super::workload_spec(s.seed, s.orders);
    let mut c = orderfold(&s.config_file);
    c.args(["generate", "--kafka"])
        .args(["--seed", &spec.seed.to_string()])
        .args(["--orders", &spec.orders.to_string()])
        .args(["--skus", &spec.skus.to_string()]);
    if let Some(rate) = rate_per_s {
        c.args(["--produce-rate-per-s", &rate.to_string()]);
    }
    c
}

/// A broker with the topics created and the workload's records known, but not produced yet.
pub fn setup_empty(seed: u64, orders: usize) -> Setup {
    let tansu = Tansu::start();
    let state = tempfile::tempdir().unwrap();
    let config = super::config(&tansu.addr, state.path(), ORDER_PARTITIONS, SKU_PARTITIONS);
    let config_file = state.path().join("orderfold.toml");
    super::write_config(&config, &config_file);
    topics_create(&config_file);
    let (_, records) = super::workload(seed, orders);
    Setup {
        tansu,
        state,
        config,
        config_file,
        records,
        seed,
        orders,
    }
}

/// The `processed_this_run` of a run's JSON report on its last stdout line.
pub fn processed(stdout: &[u8]) -> u64 {
    report(stdout)["processed_this_run"].as_u64().unwrap()
}

/// Waits for a child to exit, up to `limit`; kills it and fails past that.
pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
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
pub fn spawn_run(config_file: &Path, args: &[&str]) -> (Running, Receiver<String>) {
    spawn_run_with(config_file, args, &[], 1)
}

/// `spawn_run` with extra environment and a least number of records processed (by this
/// process) before it returns.
pub fn spawn_run_with(
    config_file: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    min_processed: u64,
) -> (Running, Receiver<String>) {
    let (mut child, rx) = spawn_run_logged(config_file, args, env);
    if let Err(why) = wait_committed(&rx, min_processed, Duration::from_secs(120)) {
        let _ = child.kill();
        panic!("{why}");
    }
    (child, rx)
}

/// A child process that is killed when dropped, so a failing test leaves no instance behind.
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `run` with a JSON log at debug level, returned line by line, without waiting.
pub fn spawn_run_logged(
    config_file: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Running, Receiver<String>) {
    let mut child = orderfold(config_file)
        .env("RUST_LOG", "orderfold=debug")
        .env("ORDERFOLD_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // With ORDERFOLD_TEST_LOG_DIR set, every run's whole log is kept there too, for a failure
    // the last lines in its message do not explain.
    let mut keep = std::env::var_os("ORDERFOLD_TEST_LOG_DIR").map(|dir| {
        let path = Path::new(&dir).join(format!("run-{}.log", child.id()));
        std::fs::File::create(path).unwrap()
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(file) = &mut keep {
                let _ = writeln!(file, "{line}");
            }
            if tx.send(line).is_err() && keep.is_none() {
                break;
            }
        }
    });
    (Running(child), rx)
}

/// Waits until a line of a run's JSON log has fields that satisfy `wanted`; `what` names the
/// awaited event in the error after `limit`.
fn wait_log(
    log: &Receiver<String>,
    limit: Duration,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    // The last lines read, so a failure shows what the process was doing instead.
    let mut recent = std::collections::VecDeque::with_capacity(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match log.recv_timeout(left) {
            Ok(line) => line,
            Err(e) => {
                let why = match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => format!("within {limit:?}"),
                    std::sync::mpsc::RecvTimeoutError::Disconnected => {
                        "before its log ended".to_string()
                    }
                };
                let tail: Vec<String> = recent.into_iter().collect();
                return Err(format!(
                    "orderfold {what} {why}; its last log lines:\n{}",
                    tail.join("\n")
                ));
            }
        };
        if recent.len() == 20 {
            recent.pop_front();
        }
        recent.push_back(line.clone());
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if wanted(&entry["fields"]) {
            return Ok(());
        }
    }
}

/// Waits until a run's JSON log reports a commit with at least `min_processed` records
/// processed by that process.
pub fn wait_committed(
    log: &Receiver<String>,
    min_processed: u64,
    limit: Duration,
) -> Result<(), String> {
    let what = format!("did not commit {min_processed} processed records");
    wait_log(log, limit, &what, |fields| {
        fields["message"] == "committed"
            && fields["processed"].as_u64().unwrap_or(0) >= min_processed.max(1)
    })
}

/// Waits until a run's JSON log reports an assignment that gives it order-stage tasks.
pub fn wait_assigned(log: &Receiver<String>, limit: Duration) -> Result<(), String> {
    wait_log(log, limit, "got no order-stage task", |fields| {
        fields["message"] == "partitions assigned" && fields["order_tasks"] != "[]"
    })
}

/// Waits until a run's JSON log reports a new assignment, whatever it holds.
pub fn wait_rebalanced(log: &Receiver<String>, limit: Duration) -> Result<(), String> {
    wait_log(log, limit, "saw no rebalance", |fields| {
        fields["message"] == "partitions assigned"
    })
}

/// A run's JSON report, from the last line of its stdout.
pub fn report(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().expect("a report line");
    serde_json::from_str(line).expect("a JSON report")
}

/// SIGTERM, then the exit status, within the shutdown timeout and some slack.
pub fn terminate(child: &mut Child, config: &Config) -> ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let timeout = Duration::from_millis(config.runtime.shutdown_timeout_ms);
    wait_exit(child, timeout + Duration::from_secs(5))
}

/// The number of records in every changelog topic of the application now.
pub fn changelog_records(config: &Config) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = orderfold::kafka::client_config(config).create().unwrap();
    let names = orderfold::kafka::TopicNames::from_config(config);
    let mut total = 0;
    for stage in [Stage::Order, Stage::Sku] {
        let partitions = match stage {
            Stage::Order => ORDER_PARTITIONS,
            Stage::Sku => SKU_PARTITIONS,
        };
        for (_, topic) in names.changelogs(stage) {
            for p in 0..partitions as i32 {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap();
                total += high - low;
            }
        }
    }
    total
}
