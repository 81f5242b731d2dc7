//! A real `redis-server` for a test: on a free loopback port, without persistence, in a temp
//! directory, stopped (killed) when dropped. `scripts/test.sh` installs the server when the
//! machine lacks it; a test run without it fails here with a message that says so.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn spawn(port: u16, dir: &std::path::Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); install it (apt-get install redis-server), as scripts/test.sh does")
        })
}

impl RedisServer {
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for redis");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let child = spawn(port, dir.path());
            let mut server = RedisServer {
                child,
                port,
                _dir: dir,
            };
            if server.wait_until_listening() {
                return server;
            }
            // The port was taken between choosing and binding it: `server` is dropped
            // (killed); try another.
        }
        panic!("redis-server did not start on a free port in five attempts");
    }

    fn wait_until_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Commands the server has executed so far, by name (`INFO commandstats`), without the
    /// `INFO` calls this makes: what a test compares before and after to count round trips.
    pub fn commands_executed(&self) -> BTreeMap<String, u64> {
        let info = self.query(&["INFO", "commandstats"]);
        let mut calls = BTreeMap::new();
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let (name, stats) = rest.split_once(':').expect("cmdstat_NAME:stats");
            let n = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .expect("calls=N");
            if name != "info" {
                calls.insert(name.to_owned(), n);
            }
        }
        calls
    }

    /// Sends one command over a fresh connection and returns its reply as text (a status,
    /// an integer or a bulk string; enough for INFO, CLIENT and CONFIG).
    pub fn query(&self, args: &[&str]) -> String {
        use std::io::{BufRead, BufReader, Read, Write};
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("redis");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        conn.write_all(request.as_bytes()).expect("send to redis");
        let mut reader = BufReader::new(conn);
        let mut head = String::new();
        reader.read_line(&mut head).expect("redis reply");
        let head = head.trim_end();
        match head.as_bytes().first() {
            Some(b'$') => {
                let len: usize = head[1..].parse().expect("bulk length");
                let mut body = vec![0; len + 2];
                reader.read_exact(&mut body).expect("bulk body");
                body.truncate(len);
                String::from_utf8(body).expect("utf-8 reply")
            }
            Some(b'+' | b':') => head[1..].to_owned(),
            _ => panic!("redis answered {head:?} to {args:?}"),
        }
    }

    /// Starts the server again on the same port (empty: nothing is persisted), after
    /// [`RedisServer::kill`]: Redis coming back after an outage.
    pub fn restart(&mut self) {
        self.kill();
        self.child = spawn(self.port, self._dir.path());
        assert!(
            self.wait_until_listening(),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Stops the server at once (a crash, for tests of what happens without it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
