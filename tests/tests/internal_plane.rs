//! Attacks on the internal gRPC plane of a real `strata dev`: its metadata and storage ports
//! answer neither plaintext nor a certificate of another CA, and a certificate of its own CA is
//! refused on every RPC outside its role's row of the table (`strata_tls::authz::RPC_ROLES`),
//! while in-row calls go through. What was acknowledged before the attacks is still there,
//! once.

#![allow(clippy::disallowed_methods)] // a test of real processes in real time

use std::collections::BTreeMap;

use strata_client::model;
use strata_common::proto as pb;
use strata_tests::DevProcess;
use strata_tests::internal::{call, channel, forged_credentials, refuses_strangers};
use strata_tls::Role;
use strata_tls::authz::{Listener, RPC_ROLES};
use strata_tls::pki::LocalCa;

fn now_ms() -> u64 {
    strata_common::Clock::now_ms(&strata_common::SystemClock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_ports_refuse_strangers_and_every_role_outside_its_row() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = DevProcess::start(&dir.path().join("dev"), &[])?;
    let api = dev.api();
    api.create_queue(&model::CreateQueue::named("before")).await?;
    let body = "acknowledged before the attacks";
    api.send("before", &model::SendMessages { messages: vec![model::NewMessage::new(body)] }, None).await?;

    let env: BTreeMap<String, String> = dev.credentials_env()?.into_iter().collect();
    let endpoints = [
        (Listener::Metadata, Role::Metadata, env["STRATA_METADATA_ENDPOINTS"].clone()),
        (Listener::Storage, Role::Storage, env["STRATA_STORAGE_ENDPOINT"].clone()),
    ];

    // Plaintext, and a certificate another CA signed (naming a proxy, trusting dev's CA so the
    // client side would go on), get no answer on either port.
    let forged = forged_credentials(&dir.path().join("other-ca"), dev.data_dir.join("tls/ca.pem"))?;
    let mut wrong = Vec::new();
    for (_, role, address) in &endpoints {
        wrong.extend(refuses_strangers(address, &forged, *role).await);
    }

    // A certificate of dev's own CA for each role (as an attacker holding one would have):
    // every RPC outside the role's row is refused before the service sees it.
    let ca = LocalCa::open_or_create(&dev.data_dir.join("tls"), now_ms())?;
    let mut refused = 0;
    for role in Role::ALL {
        let credentials = ca.credentials(role, "attacker", now_ms())?;
        for (listener, server_role, address) in &endpoints {
            let channel = channel(address, &credentials, *server_role);
            for (row_listener, path, roles) in RPC_ROLES {
                if row_listener != listener || roles.contains(&role) {
                    continue;
                }
                match call(channel.clone(), path).await {
                    Err(status) if status.code() == tonic::Code::PermissionDenied => refused += 1,
                    other => wrong.push(format!("{role} called {path}: {other:?}")),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(refused > 100, "only {refused} refusals checked");

    // A storage certificate acts only as its own node: it cannot heartbeat or register as
    // another.
    let impostor = ca.credentials(Role::Storage, "attacker", now_ms())?;
    let mut metadata = pb::metadata_client::MetadataClient::new(channel(&endpoints[0].2, &impostor, Role::Metadata));
    let heartbeat = pb::HeartbeatRequest { node_id: "dev-storage-1".into(), ..Default::default() };
    let refused = metadata.heartbeat(heartbeat).await.expect_err("a heartbeat as another node");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let register = pb::RegisterStorageNodeRequest {
        node_id: "dev-storage-1".into(),
        address: "http://127.0.0.1:1".into(),
        ..Default::default()
    };
    let refused = metadata.register_storage_node(register).await.expect_err("a registration as another node");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // In-row calls go through: a proxy reads a tenant's limits; billing reads them too.
    for role in [Role::Proxy, Role::Billing] {
        let credentials = ca.credentials(role, "in-row", now_ms())?;
        let client = strata_metadata_client::MetadataClient::connect_lazy(&endpoints[0].2, &credentials)?;
        client.get_tenant_limits("dev").await?;
    }

    // What was acknowledged before is still there, once.
    let got = api.receive("before", &model::Receive { max_messages: Some(10), ..Default::default() }).await?;
    let bodies: Vec<&str> = got.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, [body]);
    Ok(())
}
