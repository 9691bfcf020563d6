//! This process's CPU time, resident memory and open file descriptors, read from `/proc/self`
//! at each scrape (the names Prometheus's own client libraries use, so stock dashboards work),
//! and the heap bytes the allocator has handed out. On a system without `/proc` (or another
//! allocator than glibc's) those figures are left out of the scrape.
//!
//! Heap bytes next to resident memory tell what the process's data holds from what the
//! allocator keeps free in its arenas: only the first is an exact, repeatable figure (what a
//! queue costs is measured with it, `tests/tests/memory.rs`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, 100 on Linux whatever the
/// kernel's own tick rate).
const USER_HZ: f64 = 100.0;
/// Bytes per page of `/proc/<pid>/statm` (4 KiB on the platforms Strata runs on).
const PAGE_BYTES: u64 = 4096;

#[derive(Debug)]
pub(crate) struct ProcessCollector;

/// User plus system CPU seconds, from `/proc/self/stat` (fields 14 and 15, counted after the
/// command name, which may itself hold spaces and parentheses).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / USER_HZ)
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE_BYTES)
}

/// Bytes in use in the allocator's arenas plus its separately mapped large blocks (glibc's
/// `mallinfo2`, which walks every arena under its lock: a scrape's cost, not a call's).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_bytes() -> Option<u64> {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value.
    let info = unsafe { libc::mallinfo2() };
    Some(info.uordblks as u64 + info.hblkhd as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_bytes() -> Option<u64> {
    None
}

fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// Writes one figure's family and value.
fn emit(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// The families the collector emits, with their units.
pub(crate) const FAMILY_NAMES: [&str; 4] =
    ["process_cpu_seconds", "process_resident_memory_bytes", "process_heap_bytes", "process_open_fds"];

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(seconds) = cpu_seconds() {
            let cpu = ConstCounter::new(seconds);
            emit(&mut encoder, "process_cpu", "User and system CPU time of this process", Some(&Unit::Seconds), &cpu)?;
        }
        if let Some(bytes) = resident_bytes() {
            let resident = ConstGauge::new(bytes as i64);
            emit(
                &mut encoder,
                "process_resident_memory",
                "Resident memory of this process",
                Some(&Unit::Bytes),
                &resident,
            )?;
        }
        if let Some(bytes) = heap_bytes() {
            let heap = ConstGauge::new(bytes as i64);
            let help = "Heap bytes the allocator has handed out and not taken back";
            emit(&mut encoder, "process_heap", help, Some(&Unit::Bytes), &heap)?;
        }
        if let Some(fds) = open_fds() {
            emit(&mut encoder, "process_open_fds", "Open file descriptors", None, &ConstGauge::new(fds as i64))?;
        }
        Ok(())
    }
}
