//! `sluice proxy` as a user runs it: `proxy ca`, the config file, the flat serving flags
//! (with `--mode diff`), and the `report` / `prune` subcommands over a directory a real
//! proxy run left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use sluice_mock::{MockOptions, MockServer};
use sluice_proxy::{Mode, ProxyConfig, ProxyServer};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

fn sluice(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn body(content: &str) -> Value {
    json!({"model": "mock", "messages": [{"role": "user", "content": content}], "max_tokens": 4})
}

async fn post(base: &str, content: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body(content))
        .send()
        .await
        .unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()[name].to_str().unwrap().to_owned()
}

/// Records three questions through a real proxy, then replays two in a second run.
/// Returns the file of the question left unused.
async fn record_three_use_two(dir: &Path) -> String {
    let mock = MockServer::start(MockOptions::zero_timing(), SocketAddr::from(LOOPBACK))
        .await
        .unwrap();
    let upstream = mock.base_url().trim_end_matches("/v1").to_owned();
    let recorder = ProxyServer::start(
        ProxyConfig::new(&upstream, dir, Mode::Record),
        SocketAddr::from(LOOPBACK),
    )
    .await
    .unwrap();
    let mut files = Vec::new();
    for q in ["one", "two", "three"] {
        let resp = post(&recorder.base_url(), q).await;
        assert_eq!(header(&resp, "x-sluice-replay"), "recorded");
        files.push(header(&resp, "x-sluice-replay-file"));
    }
    recorder.shutdown().await;
    let replayer = ProxyServer::start(
        ProxyConfig::new(&upstream, dir, Mode::Replay),
        SocketAddr::from(LOOPBACK),
    )
    .await
    .unwrap();
    for q in ["one", "two"] {
        assert_eq!(
            header(&post(&replayer.base_url(), q).await, "x-sluice-replay"),
            "hit"
        );
    }
    replayer.shutdown().await;
    mock.shutdown().await;
    files.pop().unwrap()
}

#[tokio::test]
async fn report_names_the_unused_entry_and_prune_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let unused = record_three_use_two(dir.path()).await;
    let d = dir.path().to_str().unwrap();

    let out = sluice(&["proxy", "report", "--dir", d, "--since-start"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let stale = text.split("unused (1):").nth(1).expect("an unused section");
    assert!(stale.contains(&unused), "{text}");
    assert!(text.contains("used (2):"), "{text}");
    assert!(text.contains("counts: hits 2, misses 0"), "{text}");
    // Entries are named by their model and the start of their last message.
    assert!(text.contains("mock: \"three\""), "{text}");

    let out = sluice(&["proxy", "report", "--dir", d, "--json"]);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["unused"], json!([unused]));
    assert_eq!(report["entries"].as_array().unwrap().len(), 3);

    // A run that used nothing (the suite never reached the proxy) must not prune.
    let elsewhere = tempfile::tempdir().unwrap();
    let shard = elsewhere.path().join("empty-run.json");
    let mut empty = report["last_run"].clone();
    empty["used"] = json!([]);
    empty["counts"]["hits"] = json!(0);
    std::fs::write(&shard, empty.to_string()).unwrap();
    let out = sluice(&[
        "proxy",
        "prune",
        "--dir",
        d,
        "--run",
        shard.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("used none of the 3 recordings"),
        "{}",
        stderr(&out)
    );
    let out = sluice(&["proxy", "prune", "--dir", d, "--min-used", "90"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("only 2 of the 3"), "{}", stderr(&out));

    let out = sluice(&["proxy", "prune", "--dir", d, "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!(
        "would remove {}",
        dir.path().join(&unused).display()
    )));
    assert!(dir.path().join(&unused).exists());

    let out = sluice(&["proxy", "prune", "--dir", d]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("removed {}", dir.path().join(&unused).display())));
    assert!(!dir.path().join(&unused).exists());
    let left = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count();
    assert_eq!(left, 2);
}

#[test]
fn report_and_prune_without_a_run_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["proxy", "report", "--dir", d, "--since-start"],
        vec!["proxy", "prune", "--dir", d],
    ] {
        let out = sluice(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("run the suite through the proxy first"),
            "{}",
            stderr(&out)
        );
    }
    // Without --since-start the report lists the (empty) directory and says what is missing.
    let out = sluice(&["proxy", "report", "--dir", d]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("no last-run record"));
    let out = sluice(&["proxy", "report", "--dir", &format!("{d}/missing")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not a directory"));
    let out = sluice(&[
        "proxy",
        "--upstream",
        "http://127.0.0.1:1",
        "--dir",
        d,
        "--mode",
        "fast",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("read-old-write-new, passthrough, diff"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn flat_flags_serve_diff_mode_and_sigterm_finishes_the_run_record() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockServer::start(MockOptions::zero_timing(), SocketAddr::from(LOOPBACK))
        .await
        .unwrap();
    let upstream = mock.base_url().trim_end_matches("/v1").to_owned();
    let mut child = Command::new(BIN)
        .args([
            "proxy",
            "--upstream",
            &upstream,
            "--dir",
            dir.path().to_str().unwrap(),
            "--mode",
            "diff",
            "--listen",
            "127.0.0.1:0",
            "--diff-ignore",
            "usage",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("the proxy printed its address")
            .unwrap();
        if let Some(i) = line.find("listening on http://") {
            let rest = &line[i + "listening on ".len()..];
            let base = rest.split_whitespace().next().unwrap();
            break base.trim_end_matches(',').to_owned();
        }
    };
    let resp = post(&base, "nothing recorded").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-sluice-replay"), "passthrough");
    assert_eq!(header(&resp, "x-sluice-drift"), "no-recording");
    let metrics = reqwest::get(format!("{base}/_sluice/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sluice_proxy_drift_total{verdict=\"no-recording\"} 1"),
        "{metrics}"
    );

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    mock.shutdown().await;

    let state = dir.path().join(".sluice");
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("last-run.json")).unwrap())
            .unwrap();
    assert_eq!(run["mode"], "diff");
    assert!(run["finished_at_unix_ms"].is_u64(), "{run:#}");
    assert_eq!(run["counts"]["passthrough"], 1);
    let drift: Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("drift.json")).unwrap()).unwrap();
    assert_eq!(drift["items"][0]["verdict"], "no-recording");
    assert_eq!(drift["items"][0]["method"], "POST");
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn proxy_ca_prints_the_certificate_path_and_how_to_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let (ok, stdout, stderr) = run(&["proxy", "ca", "--ca-dir", ca_dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let cert = ca_dir.join("sluice-ca.pem");
    assert_eq!(stdout.lines().next().unwrap(), cert.display().to_string());
    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    for hint in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "update-ca-certificates",
        "curl -x",
        "HTTPS_PROXY=",
    ] {
        assert!(stdout.contains(hint), "{hint} missing from:\n{stdout}");
    }
    // Run again: same path, same CA.
    let (ok, again, _) = run(&["proxy", "ca", "--ca-dir", ca_dir.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(again.lines().next(), stdout.lines().next());
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), pem);

    // Serving flags do not mix with the subcommand.
    let (ok, _, stderr) = run(&["proxy", "--dir", "x", "ca"]);
    assert!(!ok);
    assert!(stderr.contains("error"), "{stderr}");
}

#[test]
fn a_bad_config_file_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "dir = \"rec\"\n[[routes]]\nprefix = \"/a\"\nurl = \"nonsense\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = run(&["proxy", "--config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("`routes[0].url`"), "{stderr}");

    std::fs::write(&file, "dir = \"rec\"\nmodes = \"replay\"\n").unwrap();
    let (ok, _, stderr) = run(&["proxy", "--config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("unknown field `modes`"), "{stderr}");

    let (ok, _, stderr) = run(&["proxy", "--upstream", "http://127.0.0.1:9"]);
    assert!(!ok);
    assert!(stderr.contains("--dir is required"), "{stderr}");
}

/// A running `sluice proxy`, killed on drop.
struct Proxy {
    child: Child,
    base: String,
}

impl Proxy {
    fn start(args: &[&str]) -> Proxy {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let start = first.find("http://").unwrap();
        let rest = &first[start..];
        let base = rest[..rest.find(',').unwrap()].to_owned();
        Proxy { child, base }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn error_type(url: String) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    (status, v["error"]["type"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn flat_flags_and_config_routes_serve() {
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec");
    let rec_arg = rec.to_str().unwrap();
    // The flat form as before: the one upstream answers every path (here: a replay miss,
    // since nothing is recorded and the mode is replay).
    let flat = Proxy::start(&[
        "proxy",
        "--upstream",
        "http://127.0.0.1:9",
        "--dir",
        rec_arg,
    ]);
    assert_eq!(
        error_type(format!("{}/v1/models", flat.base)).await,
        (502, "replay_miss".to_owned())
    );
    drop(flat);

    // No upstream at all: a forward proxy, which has no route for a path.
    let forward = Proxy::start(&["proxy", "--dir", rec_arg]);
    assert_eq!(
        error_type(format!("{}/v1/models", forward.base)).await,
        (502, "no_upstream".to_owned())
    );
    drop(forward);

    // Routes from the file; --dir from the file too.
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "dir = \"rec\"\n[[routes]]\nprefix = \"/openai\"\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let routed = Proxy::start(&["proxy", "--config", file.to_str().unwrap()]);
    assert_eq!(
        error_type(format!("{}/openai/v1/models", routed.base)).await,
        (502, "replay_miss".to_owned())
    );
    assert_eq!(
        error_type(format!("{}/other/v1/models", routed.base)).await,
        (502, "no_upstream".to_owned())
    );
    assert!(Path::new(&dir.path().join("rec")).is_dir());
}
