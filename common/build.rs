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
        // Tenant limits are the admin API's JSON (absent: 0). Nothing persists a wire type: the
        // catalog and the shards own their persisted types (docs/formats.md).
        .type_attribute(
            ".strata.v1.TenantLimits",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        )
        .compile_protos(&["proto/strata.proto"], &["proto"])?;
    Ok(())
}
