//! The crate graph draws the architecture (DESIGN.md §1): front doors and services reach the
//! servers through client crates only, and clients never pull in their servers. Read from
//! `cargo metadata`: the normal (non-dev, non-build) dependencies of each crate, transitively.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Each crate, and what it must not depend on, even indirectly.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("strata-proxy", &["openraft", "strata-metadata", "strata-raft", "strata-wal", "strata-storage", "object_store"]),
    ("strata-billing", &["openraft", "strata-metadata", "strata-raft", "strata-wal", "strata-storage", "strata-proxy"]),
    ("strata-metadata-client", &["strata-metadata", "strata-raft", "strata-wal", "openraft"]),
    ("strata-storage-client", &["strata-storage", "strata-metadata", "strata-raft", "strata-wal", "openraft"]),
    ("strata-http", &["strata-proxy", "strata-metadata", "strata-storage", "strata-raft", "strata-wal"]),
    ("strata-wal", &["openraft", "tonic"]),
    // The native API's client (CLI, bench, tests, users' programs): no server and no web framework.
    ("strata-client", &["strata-proxy", "strata-http", "strata-metadata", "strata-storage", "strata-raft", "axum"]),
];

/// Package name → the names of its normal dependencies, for the whole workspace's resolve.
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The build's own platform: its dependencies are all on this machine already.
    let host = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    let host = String::from_utf8_lossy(&host.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc names its host");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", &host])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo metadata");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    let metadata: Value = serde_json::from_slice(&output.stdout).expect("cargo metadata JSON");
    let name_of: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let mut graph = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().expect("resolve nodes") {
        let name = name_of[node["id"].as_str().expect("node id")].to_owned();
        let deps = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| d["dep_kinds"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null())))
            .map(|d| name_of[d["pkg"].as_str().expect("pkg")].to_owned())
            .collect::<BTreeSet<_>>();
        graph.entry(name).or_insert_with(BTreeSet::new).extend(deps);
    }
    graph
}

fn transitive(graph: &BTreeMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(name) = stack.pop() {
        for dep in graph.get(&name).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                stack.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn front_doors_and_clients_do_not_depend_on_servers() {
    let graph = normal_dependencies();
    let mut violations = Vec::new();
    for (krate, forbidden) in FORBIDDEN {
        assert!(graph.contains_key(*krate), "{krate} is not in the workspace");
        let deps = transitive(&graph, krate);
        for name in *forbidden {
            if deps.contains(*name) {
                violations.push(format!("{krate} depends on {name}"));
            }
        }
    }
    assert!(violations.is_empty(), "the crate graph breaks the architecture: {violations:?}");
    // The check sees real edges: the proxy does reach the servers through their clients.
    let proxy = transitive(&graph, "strata-proxy");
    assert!(proxy.contains("strata-metadata-client") && proxy.contains("strata-storage-client"));
}
