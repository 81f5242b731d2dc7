//! Facts about the machine the generator runs on, and its own CPU use.

use serde::{Deserialize, Serialize};

/// Where the run happened; part of every JSON report so two reports can be compared with
/// their circumstances in view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub hostname: String,
    pub cores: usize,
    pub os: String,
    pub kernel: Option<String>,
    pub arch: String,
}

impl Environment {
    pub fn detect() -> Environment {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let hostname = read("/proc/sys/kernel/hostname")
            .or_else(|| read("/etc/hostname"))
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".to_owned());
        let os = read("/etc/os-release")
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| std::env::consts::OS.to_owned());
        Environment {
            hostname,
            cores: cores(),
            os,
            kernel: read("/proc/sys/kernel/osrelease"),
            arch: std::env::consts::ARCH.to_owned(),
        }
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// CPU seconds (user + system, all threads) this process has used so far, from
/// `/proc/self/stat`. `None` where that file does not exist (not Linux).
///
/// The fields are in clock ticks of USER_HZ, which Linux fixes at 100 for everything it
/// exports through /proc regardless of the kernel's internal HZ.
pub fn process_cpu_seconds() -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields are counted
    // from the last ')'.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: f64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: f64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_and_cpu_are_read() {
        let env = Environment::detect();
        assert!(env.cores >= 1);
        assert!(!env.hostname.is_empty());
        if cfg!(target_os = "linux") {
            let before = process_cpu_seconds().unwrap();
            // Burn a little CPU so the counter can only go up.
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            assert!(x != 1);
            let after = process_cpu_seconds().unwrap();
            assert!(after >= before);
        }
    }
}
