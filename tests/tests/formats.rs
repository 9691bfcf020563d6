//! Data written by earlier releases opens in this one.
//!
//! `tests/fixtures/formats/dev-v0` is a `strata dev` data directory written before on-disk formats
//! carried versions (see its README): queues of every kind, visible, in-flight, delayed and
//! scheduled messages, FIFO groups, a dead-letter pair, tiered and local log segments, a shard
//! snapshot with slice files, SigV4 keys and billing data. This release must open it with
//! everything in place, which `dev_data_dir.py check` verifies through both APIs.

use std::path::{Path, PathBuf};
use std::process::Command;

use strata_common::{Clock, SystemClock};
use strata_tests::{DevProcess, run_ok, strata_binary};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/formats").join(name)
}

/// The server runs at the fixture's time plus this much, so nothing has expired yet and nothing
/// scheduled has come due.
const CLOCK_AFTER_FIXTURE_MS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_data_directory_from_before_format_versions_opens_with_everything_in_place() -> anyhow::Result<()> {
    let source = fixture("dev-v0");
    let state_file = source.join("state.json");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_file)?)?;
    let fixture_time_ms = state["fixture_time_ms"].as_u64().expect("fixture_time_ms in state.json");

    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    run_ok(Command::new("cp").arg("-a").arg(source.join("data")).arg(&data_dir))?;
    let start_ms = fixture_time_ms + CLOCK_AFTER_FIXTURE_MS;
    let offset_ms = start_ms as i64 - SystemClock.now_ms() as i64;
    let dev = DevProcess::start(&data_dir, &["--clock-start-unix-ms", &start_ms.to_string()])?;
    let out = run_ok(
        dev.command_with_credentials("python3")?
            .env("STRATA_TEST_CLOCK_OFFSET_MS", offset_ms.to_string())
            .env("STRATA_BIN", strata_binary())
            .arg(fixture("dev_data_dir.py"))
            .arg("check")
            .arg(&state_file),
    )?;
    assert!(out.contains("all checks passed"), "{out}");
    Ok(())
}
