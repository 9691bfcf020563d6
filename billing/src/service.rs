//! The billing service's loops: counting metering records, and enforcing budgets.
//!
//! # What it owns
//!
//! - [`consume`]: receives the batches proxies append to the system metering queue, counts
//!   their records into the store, then deletes them. A batch is deleted only after its records
//!   are committed, and counting is idempotent per (tenant, request id), so a crash at any point
//!   redelivers the batch and nothing is counted twice or lost.
//! - [`drain_outboxes`]: reads the metering outboxes of the shards every storage node leads
//!   (the records of sends, kept with their messages), counts them, then trims them. A trim
//!   follows the commit of what it drops, so a crash between the two only reads records again.
//! - [`enforce_budgets`]: every [`BUDGET_CHECK_INTERVAL`], prices each budgeted tenant's month
//!   so far; raises an alert once per month when the spend reaches the budget, and while it is
//!   at or over the hard cap, marks the tenant capped in metadata, where every proxy reads it
//!   and refuses the tenant's calls (and lifts the mark when the cap is raised or a month starts).
//! - [`prune_keys`]: every [`PRUNE_INTERVAL`], forgets the counted keys older than any record
//!   can come again ([`crate::store::KEY_HORIZON_MS`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use strata_common::error::{ErrorKind, StrataError};
use strata_common::metering::{METERING_QUEUE, MeterRecord, SYSTEM_TENANT, decode_batch};
use strata_common::proto as pb;
use strata_common::{Clock, Random};
use strata_storage_client::queues::{self, ensure_metering_queue};
use strata_storage_client::routing::Router as Placement;
use tokio_util::sync::CancellationToken;

use crate::pricing::{Month, format_micros as dollars};
use crate::store::{Alert, AlertKind, BillingStore, StoreError};

/// How long one receive of the metering queue waits for a batch.
const RECEIVE_WAIT_MS: u64 = 5_000;
/// Pause after a failed pass before the next.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Pause between passes over the metering outboxes that found nothing.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(500);
/// Most outbox records one storage node answers per pass.
const OUTBOX_READ_RECORDS_MAX: u32 = 5_000;
/// How often counted keys past the horizon are forgotten.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// How often budgets and hard caps are checked.
pub const BUDGET_CHECK_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Strata(#[from] StrataError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counts metering batches into `store` until `cancel`.
pub async fn consume(store: BillingStore, placement: Arc<Placement>, cancel: CancellationToken) {
    loop {
        let pass = tokio::select! {
            _ = cancel.cancelled() => return,
            pass = consume_once(&store, &placement) => pass,
        };
        if let Err(e) = pass {
            tracing::warn!(error = %e, "counting metering records failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return,
                () = placement.metadata.clock().sleep(RETRY_PAUSE) => {}
            }
        }
    }
}

/// Receives up to ten batches, counts them, deletes them; answers how many records were new.
pub async fn consume_once(store: &BillingStore, placement: &Placement) -> Result<usize, ServiceError> {
    let receive = |mut c: strata_storage_client::clients::StorageGrpcClient, queue| async move {
        c.receive(pb::ReceiveRequest {
            queue: Some(queue),
            max_messages: strata_common::limits::RECEIVE_BATCH_MAX,
            wait_ms: RECEIVE_WAIT_MS,
            ..Default::default()
        })
        .await
    };
    let received =
        match queues::on_queue_polling(placement, SYSTEM_TENANT, METERING_QUEUE, RECEIVE_WAIT_MS, receive).await {
            Err(e) if e.kind == ErrorKind::QueueNotFound => {
                ensure_metering_queue(placement).await?;
                return Ok(0);
            }
            other => other?,
        };
    let mut batches = Vec::new();
    let mut counted = Vec::new();
    for message in received.messages {
        let records = match decode_batch(&message.body) {
            Ok(records) => records,
            Err(e) => {
                // Left in the queue (nothing is dropped): it comes back after its visibility
                // timeout, for an operator to look at.
                tracing::error!(message_id = %message.message_id, error = %e, "a metering batch cannot be read");
                continue;
            }
        };
        batches.push((message.message_id, records));
        counted.push(message.receipt_handle);
    }
    if counted.is_empty() {
        return Ok(0);
    }
    // One transaction (one commit, one fsync) for every batch of the receive.
    let new = store.record_batches(&batches).await?;
    strata_telemetry::billing().counted_records.inc_by(new as u64);
    let deleted =
        queues::on_queue(placement, SYSTEM_TENANT, METERING_QUEUE, |mut c, queue| {
            let receipt_handles = counted.clone();
            async move {
                c.delete(pb::DeleteRequest { queue: Some(queue), receipt_handles, meter: None, caller: None }).await
            }
        })
        .await;
    // Counted already: a batch that stays is counted as nothing when it comes back.
    if let Err(e) = deleted {
        tracing::warn!(error = %e, "deleting counted metering batches failed; they will be seen again");
    }
    Ok(new)
}

/// Counts the shards' metering outboxes until `cancel`: every [`DRAIN_INTERVAL`], or at once
/// again after a pass that read as much as it may (a backlog). Passes at an interval batch the
/// records of busy shards: each pass costs a store commit and a trim per shard, not per record.
pub async fn drain_outboxes(store: BillingStore, placement: Arc<Placement>, cancel: CancellationToken) {
    loop {
        let pause = match drain_outboxes_once(&store, &placement).await {
            Ok(read) if read >= OUTBOX_READ_RECORDS_MAX as usize => Duration::ZERO,
            Ok(_) => DRAIN_INTERVAL,
            Err(e) => {
                tracing::warn!(error = %e, "counting metering outboxes failed; retrying");
                RETRY_PAUSE
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = placement.metadata.clock().sleep(pause) => {}
        }
    }
}

/// One pass over every live storage node: counts up to [`OUTBOX_READ_RECORDS_MAX`] records of
/// the shards it leads and trims them; answers how many records were read. A node that cannot
/// be reached is skipped until the next pass (its records stay in its shards' outboxes).
pub async fn drain_outboxes_once(store: &BillingStore, placement: &Placement) -> Result<usize, ServiceError> {
    let mut read = 0;
    let mut unread_nodes = 0;
    for node in placement.metadata.storage_nodes().await?.nodes {
        if !node.live {
            continue;
        }
        let mut client = placement.storage_at(&node.address)?;
        let request = pb::ReadMeteringRequest { records_max: OUTBOX_READ_RECORDS_MAX };
        let shards = match client.read_metering(request).await {
            Ok(response) => response.into_inner().shards,
            Err(status) => {
                tracing::warn!(node = %node.node_id, error = %StrataError::from(status), "reading metering outboxes failed");
                unread_nodes += 1;
                continue;
            }
        };
        for shard in shards {
            let (first_seq, through_seq) = (shard.first_seq, shard.through_seq);
            let records: Vec<MeterRecord> = shard.records.into_iter().map(Into::into).collect();
            let counted = store.record_outbox(shard.shard_id, first_seq, through_seq, &records, &shard.usage).await;
            // Counted already: what a failed trim leaves counts as nothing when read again.
            let trim_through = match counted {
                Ok(new) => {
                    strata_telemetry::billing().counted_records.inc_by(new as u64);
                    through_seq
                }
                // A trim failed after an earlier count: drop what was counted, read the rest next pass.
                Err(StoreError::OutboxOverlap { counted_through_seq }) => counted_through_seq,
                Err(e) => return Err(e.into()),
            };
            read += through_seq.saturating_sub(first_seq) as usize + 1;
            let trim = pb::TrimMeteringRequest { shard_id: shard.shard_id, through_seq: trim_through };
            if let Err(status) = client.trim_metering(trim).await {
                tracing::warn!(shard = shard.shard_id, error = %StrataError::from(status), "trimming a metering outbox failed");
            }
        }
    }
    if unread_nodes == 0 {
        let now_s = placement.metadata.clock().now_ms() / 1000;
        strata_telemetry::billing().last_pass_unix_seconds.set(i64::try_from(now_s).unwrap_or(i64::MAX));
    }
    Ok(read)
}

/// Forgets counted keys past the horizon at start and every [`PRUNE_INTERVAL`] until `cancel`.
pub async fn prune_keys(store: BillingStore, clock: Arc<dyn Clock>, cancel: CancellationToken) {
    loop {
        match store.prune_keys(clock.now_ms()).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "forgot counted metering keys past the horizon"),
            Err(e) => tracing::warn!(error = %e, "pruning counted metering keys failed; retrying later"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = clock.sleep(PRUNE_INTERVAL) => {}
        }
    }
}

/// Checks budgets and hard caps every [`BUDGET_CHECK_INTERVAL`] until `cancel`.
pub async fn enforce_budgets(
    store: BillingStore,
    placement: Arc<Placement>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
) {
    let mut marked = HashMap::new();
    loop {
        if let Err(e) = enforce_budgets_once(&store, &placement, clock.as_ref(), &mut marked).await {
            tracing::warn!(error = %e, "checking budgets failed; retrying");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = clock.sleep(BUDGET_CHECK_INTERVAL) => {}
        }
    }
}

/// One pass over every tenant with a budget or hard cap. `marked` remembers whether each tenant
/// was last seen capped in metadata, so metadata is read and written only when that changes.
pub async fn enforce_budgets_once(
    store: &BillingStore,
    placement: &Placement,
    clock: &dyn Clock,
    marked: &mut HashMap<String, bool>,
) -> Result<(), ServiceError> {
    let now_ms = clock.now_ms();
    let month = Month::of_ms(now_ms).map_err(StoreError::from)?;
    for (tenant, budget) in store.budgets().await? {
        let spent = store.invoice(&tenant, month).await?.total;
        let alert = |kind| Alert { month, kind, at_ms: now_ms, spent };
        if budget.monthly_budget > 0
            && spent >= budget.monthly_budget
            && store.raise_alert(&tenant, &alert(AlertKind::BudgetReached)).await?
        {
            tracing::warn!(%tenant, %month, spent = %dollars(spent), "a tenant's spend reached its monthly budget");
        }
        let capped = budget.hard_cap > 0 && spent >= budget.hard_cap;
        if capped && store.raise_alert(&tenant, &alert(AlertKind::HardCapReached)).await? {
            tracing::warn!(%tenant, %month, spent = %dollars(spent), "a tenant reached its hard cap; its calls are refused");
        }
        let reason = if capped {
            format!(
                "the monthly hard cap of {} was reached ({} spent in {month}); raise the cap or wait for next month",
                dollars(budget.hard_cap),
                dollars(spent)
            )
        } else {
            String::new()
        };
        if marked.get(&tenant) == Some(&capped) {
            continue;
        }
        // The reason names the spend, which moves: re-mark only when capped starts or ends.
        let current = placement.metadata.get_tenant_limits(&tenant).await?;
        if current.capped_reason.is_empty() == capped {
            placement.metadata.set_tenant_capped(&tenant, &reason).await?;
        }
        marked.insert(tenant, capped);
    }
    Ok(())
}

/// What the billing role needs to run.
pub struct BillingSettings {
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    pub metadata_endpoint: String,
    /// Billing's credentials on the internal plane (metadata and storage calls).
    pub tls: strata_tls::Credentials,
    /// Verifies tenants' tokens (the proxies' audience).
    pub verifier: strata_http::auth::JwtVerifier,
    /// Verifies operators' tokens (the admin audience).
    pub admin_verifier: strata_http::auth::JwtVerifier,
    pub clock: Arc<dyn Clock>,
    pub random: Random,
}

/// Opens the store, starts counting the metering queue and enforcing budgets (until `cancel`),
/// and answers the billing routes.
pub async fn start(
    settings: BillingSettings,
    cancel: CancellationToken,
) -> Result<crate::api::BillingRouters, ServiceError> {
    let store = BillingStore::open(&settings.database_url).await?;
    // Behind is measured from here until the first whole pass.
    let started_s = i64::try_from(settings.clock.now_ms() / 1000).unwrap_or(i64::MAX);
    strata_telemetry::billing().last_pass_unix_seconds.set(started_s);
    let metadata = strata_metadata_client::MetadataClient::connect_lazy(&settings.metadata_endpoint, &settings.tls)?
        .with_seams(settings.clock.clone(), settings.random.clone());
    let storage = strata_storage_client::clients::StorageClients::new(settings.tls);
    let readiness = {
        let (store, metadata) = (store.clone(), metadata.clone());
        strata_http::observe::Readiness::new(settings.clock.clone(), move || {
            let (store, metadata) = (store.clone(), metadata.clone());
            async move { vec![store.ready_check().await, metadata.quorum_check().await] }
        })
    };
    let placement = Arc::new(Placement::new(metadata, storage));
    tokio::spawn(consume(store.clone(), placement.clone(), cancel.clone()));
    tokio::spawn(drain_outboxes(store.clone(), placement.clone(), cancel.clone()));
    tokio::spawn(prune_keys(store.clone(), settings.clock.clone(), cancel.clone()));
    tokio::spawn(enforce_budgets(store.clone(), placement, settings.clock.clone(), cancel));
    let api = crate::api::BillingApi {
        store,
        verifier: Arc::new(settings.verifier),
        admin_verifier: Arc::new(settings.admin_verifier),
        clock: settings.clock,
    };
    Ok(crate::api::routers(api, readiness))
}
