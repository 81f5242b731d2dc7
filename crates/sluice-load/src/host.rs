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

/// The machine's CPU time counters (all cores), in clock ticks: everything, and the part the
/// hypervisor ran something else while this machine's vCPUs wanted to run ("steal").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    pub total: u64,
    pub steal: u64,
}

impl MachineTicks {
    /// From `/proc/stat`; `None` where it does not exist (not Linux).
    pub fn read() -> Option<MachineTicks> {
        parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Steal since `earlier`, as a share (0–100) of all cores' time.
    pub fn steal_percent_since(&self, earlier: &MachineTicks) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let steal = self.steal.checked_sub(earlier.steal)?;
        (total > 0).then(|| steal as f64 / total as f64 * 100.0)
    }
}

/// The `cpu` line: user nice system idle iowait irq softirq steal guest guest_nice. guest
/// time is already counted in user and nice, so it is left out of the total.
fn parse_proc_stat(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (fields.len() == 8).then(|| MachineTicks {
        total: fields.iter().sum(),
        steal: fields[7],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_read_from_the_cpu_line() {
        let before =
            parse_proc_stat("cpu  100 0 50 800 10 0 20 20 0 0\ncpu0 50 0 25 400 5 0 10 10 0 0\n")
                .unwrap();
        assert_eq!(
            before,
            MachineTicks {
                total: 1000,
                steal: 20
            }
        );
        let after = parse_proc_stat("cpu  200 0 100 1560 10 0 30 100 7 0\n").unwrap();
        // 1 000 ticks passed, 80 of them stolen.
        assert_eq!(after.steal_percent_since(&before), Some(8.0));
        assert_eq!(before.steal_percent_since(&after), None);
        assert_eq!(parse_proc_stat("cpu  1 2 3\n"), None);
        assert_eq!(parse_proc_stat("intr 5\n"), None);
        if cfg!(target_os = "linux") {
            assert!(MachineTicks::read().is_some());
        }
    }

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
