//! An engine killed under load, with real processes: three `sluice mock` engines behind a
//! `sluice serve`; one engine is killed (SIGKILL) while it holds requests. The requests it
//! held (non-streaming: nothing had reached their clients) are retried on the others, the
//! requests after it do not wait on it, and it is ejected; no client sees a failure. And
//! SIGHUP: the endpoints follow the file read again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A child process and the first `http://` address it printed.
struct Proc {
    child: Child,
    url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str]) -> Proc {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("printed its address").unwrap();
        if let Some(at) = line.find("http://") {
            let rest = &line[at..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ',' || c == ')')
                .unwrap_or(rest.len());
            break rest[..end].trim_end_matches("/v1").to_owned();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Proc { child, url }
}

async fn ask(client: &reqwest::Client, gateway: &str, i: usize) -> u16 {
    client
        .post(format!("{gateway}/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": format!("question {i}")}], "max_tokens": 4}))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_killed_under_load_costs_no_client_a_failure() {
    let engines: Vec<Proc> = (0..3)
        .map(|_| {
            spawn(&[
                "mock",
                "--listen",
                "127.0.0.1:0",
                "--zero-timing",
                "--added-latency",
                "300ms",
            ])
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    let mut toml =
        String::from("[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[models.m]\n");
    for (i, e) in engines.iter().enumerate() {
        toml.push_str(&format!(
            "[[models.m.endpoints]]\nname = \"pod-{i}\"\nurl = \"{}/v1\"\n",
            e.url
        ));
    }
    std::fs::write(&config, toml).unwrap();
    let gateway = spawn(&["serve", "--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let gw = gateway.url.clone();

    let mut engines = engines;
    let victim_url = engines[2].url.clone();
    // The first wave is in flight on every engine when the victim dies.
    let first: Vec<_> = (0..12)
        .map(|i| {
            let (client, gw) = (client.clone(), gw.clone());
            tokio::spawn(async move { ask(&client, &gw, i).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats: Value = client
            .get(format!("{victim_url}/admin/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["active"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the victim never held requests");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    engines[2].child.kill().unwrap();
    engines[2].child.wait().unwrap();
    let killed = Instant::now();
    // A second wave right after.
    let second: Vec<_> = (12..36)
        .map(|i| {
            let (client, gw) = (client.clone(), gw.clone());
            tokio::spawn(async move { ask(&client, &gw, i).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in first.into_iter().chain(second) {
        statuses.push(t.await.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every client got its answer: {statuses:?}"
    );
    let metrics = client
        .get(format!("{gw}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retried = metric(
        &metrics,
        "sluice_route_retries_total{model=\"m\",reason=\"reset\"}",
    );
    assert!(
        retried.unwrap_or(0.0) >= 1.0,
        "the requests the victim held were retried:\n{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "sluice_endpoint_ejected{model=\"m\",pod=\"pod-2\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    eprintln!(
        "killed at t=0; all {} answered by t={:?} (ejection is immediate on the failures the kill causes)",
        statuses.len(),
        killed.elapsed()
    );
}

/// Which endpoint answered (`x-sluice-route: pod=NAME; ...`).
async fn answered_by(client: &reqwest::Client, gateway: &str) -> String {
    let resp = client
        .post(format!("{gateway}/v1/chat/completions"))
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let route = resp.headers()["x-sluice-route"]
        .to_str()
        .unwrap()
        .to_owned();
    route
        .split("; ")
        .find_map(|kv| kv.strip_prefix("pod="))
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_brings_the_endpoints_in_line_with_the_file() {
    let engines: Vec<Proc> = (0..3)
        .map(|_| spawn(&["mock", "--listen", "127.0.0.1:0", "--zero-timing"]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    let write = |pods: &[usize]| {
        let mut toml =
            String::from("[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[models.m]\n");
        for &i in pods {
            toml.push_str(&format!(
                "[[models.m.endpoints]]\nname = \"pod-{i}\"\nurl = \"{}/v1\"\n",
                engines[i].url
            ));
        }
        std::fs::write(&config, toml).unwrap();
    };
    write(&[0, 1]);
    let gateway = spawn(&["serve", "--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let seen = |n: usize| {
        let (client, gw) = (client.clone(), gateway.url.clone());
        async move {
            let mut pods = std::collections::BTreeSet::new();
            for _ in 0..n {
                pods.insert(answered_by(&client, &gw).await);
            }
            pods
        }
    };
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen(6).await, names(&["pod-0", "pod-1"]));

    // pod-0 leaves, pod-2 arrives; pod-1 is unchanged.
    write(&[1, 2]);
    let hangup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hangup(gateway.child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pods = seen(6).await;
        if pods == names(&["pod-1", "pod-2"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after SIGHUP still answered by {pods:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A file that does not check changes nothing, and the gateway goes on serving.
    std::fs::write(&config, "[models.m]\nnot_a_key = 1\n").unwrap();
    hangup(gateway.child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen(6).await, names(&["pod-1", "pod-2"]));
    assert!(gateway_alive(&gateway));
}

fn gateway_alive(p: &Proc) -> bool {
    Command::new("kill")
        .args(["-0", &p.child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}
