//! `appid_process_*`: what an operator checks first about the sidecar
//! process itself, read from `/proc/self` at scrape time.
//!
//! Design bias: *nothing kept, nothing sampled*: every value is read when
//! Prometheus asks, so there is no background task and no staleness. The
//! names follow Prometheus' process collector (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`) under the project's `appid_` prefix.
//! Off Linux (no `/proc/self`), the process series are simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The process facts one scrape reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessFacts {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<i64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
    pub start_time_seconds: Option<i64>,
}

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, 100 on
/// every Linux architecture the project builds for.
const USER_HZ: f64 = 100.0;
/// Page size for `rss` in `/proc/self/stat`.
const PAGE_BYTES: i64 = 4096;

impl ProcessFacts {
    /// Reads `/proc/self` now.
    pub fn read() -> ProcessFacts {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let mut facts = stat
            .as_deref()
            .map(|s| from_stat(s, boot_time))
            .unwrap_or_default();
        facts.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX));
        facts.max_fds = limits.as_deref().and_then(max_open_files);
        facts
    }
}

/// CPU time, RSS and start time from the text of `/proc/self/stat`.
/// Fields are counted after the command name's closing parenthesis (the
/// name may itself hold spaces and parentheses).
pub fn from_stat(stat: &str, boot_time: Option<i64>) -> ProcessFacts {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return ProcessFacts::default();
    };
    // rest starts at field 3 (state): field N is rest[N - 3].
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<i64>().ok());
    let cpu_seconds = match (field(14), field(15)) {
        (Some(utime), Some(stime)) => Some((utime + stime) as f64 / USER_HZ),
        _ => None,
    };
    let start_time_seconds = match (field(22), boot_time) {
        (Some(ticks), Some(boot)) => Some(boot + (ticks as f64 / USER_HZ) as i64),
        _ => None,
    };
    ProcessFacts {
        cpu_seconds,
        resident_bytes: field(24).map(|pages| pages.saturating_mul(PAGE_BYTES)),
        start_time_seconds,
        ..ProcessFacts::default()
    }
}

/// `btime` of `/proc/stat`: boot time, Unix seconds.
fn boot_time(proc_stat: &str) -> Option<i64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
pub fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Encodes one constant gauge.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, unit, gauge.metric_type())?;
    gauge.encode(metric)
}

/// The collector registered with the sidecar's metrics.
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let facts = ProcessFacts::read();
        if let Some(cpu) = facts.cpu_seconds {
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu",
                "CPU time the sidecar process used, user and system",
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        for (name, help, unit, value) in [
            (
                "process_resident_memory",
                "Resident memory of the sidecar process",
                Some(&Unit::Bytes),
                facts.resident_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors of the sidecar process",
                None,
                facts.open_fds,
            ),
            (
                "process_max_fds",
                "The sidecar process's open file limit (soft)",
                None,
                facts.max_fds,
            ),
            (
                "process_start_time",
                "When the sidecar process started, Unix seconds",
                Some(&Unit::Seconds),
                facts.start_time_seconds,
            ),
        ] {
            if let Some(value) = value {
                gauge(&mut encoder, name, help, unit, value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as the kernel
        // prints it; utime 250, stime 50 ticks, starttime 1000, rss 512.
        let stat = "4242 (appid (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 123456789 512 18446744073709551615";
        let facts = from_stat(stat, Some(1_700_000_000));
        assert_eq!(facts.cpu_seconds, Some(3.0));
        assert_eq!(facts.resident_bytes, Some(512 * 4096));
        assert_eq!(facts.start_time_seconds, Some(1_700_000_010));
        assert_eq!(from_stat("garbage", None), ProcessFacts::default());
    }

    #[test]
    fn the_open_file_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax processes             63704                63704                processes \nMax open files            20000                1048576              files     \n";
        assert_eq!(max_open_files(limits), Some(20000));
        assert_eq!(max_open_files("nothing"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let facts = ProcessFacts::read();
        assert!(facts.cpu_seconds.is_some_and(|c| c >= 0.0));
        assert!(facts.resident_bytes.is_some_and(|r| r > 0));
        assert!(facts.open_fds.is_some_and(|n| n > 0));
        assert!(facts.max_fds.is_some_and(|n| n > 0));
        assert!(facts.start_time_seconds.is_some_and(|t| t > 1_600_000_000));
    }
}
