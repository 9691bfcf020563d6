//! Generates the internal gRPC types with a vendored `protoc`, so a fresh clone builds with
//! cargo alone.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/strata.proto");
    tonic_prost_build::configure()
        .bytes(".strata.v1.NewMessage.body")
        .bytes(".strata.v1.ReceivedMessage.body")
        .bytes(".strata.v1.RaftMessage.payload")
        .bytes(".strata.v1.ReadLogEntriesResponse.entries")
        // The metadata catalog stores segment records and queue configs as they travel, so one
        // type serves both.
        .type_attribute(".strata.v1.Segment", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".strata.v1.QueueConfig", "#[derive(serde::Serialize, serde::Deserialize)]")
        // Tenant limits are stored in the catalog and are the admin API's JSON too (absent: 0).
        .type_attribute(
            ".strata.v1.TenantLimits",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        // A metering record travels in shard log entries (postcard) and in metering batches (JSON).
        .type_attribute(".strata.v1.MeterRecord", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_protos(&["proto/strata.proto"], &["proto"])?;
    Ok(())
}
