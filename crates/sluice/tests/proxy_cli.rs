//! `sluice proxy` as a user runs it: `proxy ca`, the config file, flat flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

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
