//! Queue operations every front door shares: create, delete, reconfigure, and calls to the
//! storage node that holds a queue (with the stale-placement recovery below).
//!
//! Errors are [`StrataError`]s; each front door renders them in its own protocol.

use std::future::Future;
use std::time::Duration;

use strata_common::ClockExt;
use strata_common::error::{ErrorKind, StrataError};
use strata_common::names::validate_queue_name;
use strata_common::proto as pb;

use crate::clients::StorageGrpcClient;
use crate::routing::{self, Router as Placement};

/// The placement of a tenant's queue, or `QueueNotFound` naming it.
pub async fn info(placement: &Placement, tenant: &str, name: &str) -> Result<pb::QueueInfo, StrataError> {
    validate_queue_name(name)?;
    placement.queue(tenant, name).await
}

/// Creates the queue in metadata and on its storage node; idempotent for the same config.
pub async fn create_queue(
    placement: &Placement,
    tenant: &str,
    name: &str,
    config: pb::QueueConfig,
) -> Result<pb::QueueInfo, StrataError> {
    validate_queue_name(name)?;
    // Tenants are created on first use: a verified credential is proof the tenant exists.
    placement.metadata.ensure_tenant(tenant).await?;
    let info = placement.metadata.create_queue(tenant, name, config).await?;
    let ensure = pb::EnsureQueueRequest { queue: Some(routing::queue_ref(&info)), config: info.config.clone() };
    on_shard(placement, info.shard_id, |mut c| {
        let ensure = ensure.clone();
        async move { c.ensure_queue(ensure).await }
    })
    .await?;
    // Not cached until it is used: an idle queue costs the proxy nothing. An entry left from an
    // earlier queue of the name goes.
    placement.forget(tenant, name);
    Ok(info)
}

pub async fn delete_queue(placement: &Placement, tenant: &str, name: &str) -> Result<pb::QueueInfo, StrataError> {
    validate_queue_name(name)?;
    let info = placement.metadata.delete_queue(tenant, name).await?;
    placement.forget(tenant, name);
    // The queue is gone for tenants once metadata forgets it. Its state on the storage node goes
    // next: metadata journaled that step, so if this proxy fails before it ends, the shard's
    // leader does it from its heartbeats (docs/elasticity.md).
    let queue = routing::queue_ref(&info);
    let dropped = on_shard(placement, info.shard_id, |mut c| {
        let queue = queue.clone();
        async move { c.drop_queue(queue).await }
    })
    .await;
    let ended = match dropped {
        Ok(_) => placement.metadata.queue_dropped(info.queue_id).await,
        Err(e) => Err(e),
    };
    if let Err(e) = ended {
        tracing::info!(queue_id = info.queue_id, error = %e, "a deleted queue's state is not dropped yet; its shard's leader finishes it");
    }
    Ok(info)
}

/// Replaces the queue's config in metadata, then on its storage node.
pub async fn set_config(
    placement: &Placement,
    tenant: &str,
    name: &str,
    config: pb::QueueConfig,
) -> Result<pb::QueueInfo, StrataError> {
    let info = placement.metadata.set_queue_config(tenant, name, config.clone()).await?;
    placement.remember(info.clone());
    on_queue(placement, tenant, name, |mut c, q| {
        let config = config.clone();
        async move { c.ensure_queue(pb::EnsureQueueRequest { queue: Some(q), config: Some(config) }).await }
    })
    .await?;
    Ok(info)
}

/// Creates the system metering queue if it does not exist (idempotent).
pub async fn ensure_metering_queue(placement: &Placement) -> Result<pb::QueueInfo, StrataError> {
    create_queue(
        placement,
        strata_common::metering::SYSTEM_TENANT,
        strata_common::metering::METERING_QUEUE,
        strata_common::metering::metering_queue_config(),
    )
    .await
}

/// Runs a storage call for a queue. If the storage node does not know the cached incarnation,
/// the placement is re-read from metadata and, when metadata still names the same incarnation
/// (a create that crashed between metadata and storage), the queue is re-ensured before one retry.
pub async fn on_queue<T, F, Fut>(placement: &Placement, tenant: &str, name: &str, call: F) -> Result<T, StrataError>
where
    F: Fn(StorageGrpcClient, pb::QueueRef) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    on_queue_polling(placement, tenant, name, 0, call).await
}

/// [`on_queue`] for a long poll of `wait_ms`: each attempt may take that long and more.
pub async fn on_queue_polling<T, F, Fut>(
    placement: &Placement,
    tenant: &str,
    name: &str,
    wait_ms: u64,
    call: F,
) -> Result<T, StrataError>
where
    F: Fn(StorageGrpcClient, pb::QueueRef) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let attempt_timeout = ATTEMPT_TIMEOUT + Duration::from_millis(wait_ms);
    validate_queue_name(name)?;
    let not_found = || StrataError::queue_not_found(name);
    let mut healed = false;
    let clock = placement.metadata.clock();
    let mut moving_since = None;
    loop {
        let info = match placement.queue(tenant, name).await {
            Ok(info) => info,
            Err(e) if e.kind == ErrorKind::QueueNotFound => return Err(not_found()),
            Err(e) => return Err(e),
        };
        let queue = routing::queue_ref(&info);
        let e = match on_shard_within(placement, info.shard_id, attempt_timeout, |c| call(c, queue.clone())).await {
            Ok(answer) => return Ok(answer),
            // The queue is moving to another shard: wait for the switch, then go where metadata
            // routes it (a send's request id keeps a retry of one that was applied stored once).
            Err(e) if e.kind == ErrorKind::QueueMoving => {
                let since = *moving_since.get_or_insert_with(|| clock.instant());
                if clock.instant().duration_since(since) >= MOVE_WAIT {
                    return Err(e);
                }
                placement.forget(tenant, name);
                clock.sleep(MOVE_RETRY_PAUSE).await;
                continue;
            }
            Err(e) if e.kind != ErrorKind::QueueNotFound => return Err(e),
            Err(e) => e,
        };
        tracing::debug!(error = %e, "the storage node does not know the cached incarnation");
        placement.forget(tenant, name);
        if healed {
            return Err(not_found());
        }
        healed = true;
        match placement.metadata.get_queue(tenant, name).await {
            Ok(fresh) if fresh.queue_id == info.queue_id => {
                let ensure = pb::EnsureQueueRequest { queue: Some(routing::queue_ref(&fresh)), config: fresh.config };
                on_shard(placement, fresh.shard_id, |mut c| {
                    let ensure = ensure.clone();
                    async move { c.ensure_queue(ensure).await }
                })
                .await?;
            }
            Ok(_) => {}
            Err(e) if e.kind == ErrorKind::QueueNotFound => return Err(not_found()),
            Err(e) => return Err(e),
        }
    }
}

/// How long a call waits for a queue moving between shards (a move pauses its queue for about
/// a second; one that cannot finish rolls back within 30 s), before it answers `QueueMoving`
/// (a 503, which clients retry).
const MOVE_WAIT: Duration = Duration::from_secs(15);
/// Pause between attempts on a moving queue.
const MOVE_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How long one call keeps moving between the replicas of its shard: several elections (about
/// a second each), and a paused leader's attempt timeout on the way.
const REROUTE_WINDOW: Duration = Duration::from_secs(10);
/// Pause before trying another replica when none was named as leader.
const REROUTE_PAUSE: Duration = Duration::from_millis(100);
/// How long one storage call (other than a long poll's wait) may take at one replica before the
/// proxy tries another: a replica that stopped (paused, partitioned) answers nothing at all, and
/// its followers elect a new leader within about a second.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs a storage call at the leader of a shard: a replica that does not lead, cannot be
/// reached or does not answer in time sends the call on to the leader it names, or to the next
/// replica. (A send whose answer was lost is retried with its request id, so it is stored once.)
pub async fn on_shard<T, F, Fut>(placement: &Placement, shard_id: u64, call: F) -> Result<T, StrataError>
where
    F: Fn(StorageGrpcClient) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    on_shard_within(placement, shard_id, ATTEMPT_TIMEOUT, call).await
}

async fn on_shard_within<T, F, Fut>(
    placement: &Placement,
    shard_id: u64,
    attempt_timeout: Duration,
    call: F,
) -> Result<T, StrataError>
where
    F: Fn(StorageGrpcClient) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let clock = placement.metadata.clock();
    let started = clock.instant();
    loop {
        let client = placement.storage_for(shard_id).await?;
        let e = match clock.timeout(attempt_timeout, call(client)).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => StrataError::from(status),
            Err(_) => StrataError::unavailable(format!(
                "a replica of shard {shard_id} did not answer within {} ms",
                attempt_timeout.as_millis()
            )),
        };
        if e.kind != ErrorKind::Unavailable
            || clock.instant().duration_since(started) >= REROUTE_WINDOW
            || !placement.reroute(shard_id, e.leader_hint.as_deref())
        {
            return Err(e);
        }
        // A named leader may be one that just died (its followers have not elected another yet):
        // pause a little even then, so the reroutes outlast an election.
        let pause = if e.leader_hint.is_some() { REROUTE_PAUSE / 2 } else { REROUTE_PAUSE };
        clock.sleep(pause).await;
    }
}
