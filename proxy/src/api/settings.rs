//! A queue's settings on the native API: what a create or an update may set (timings, sizes,
//! FIFO, the dead-letter queue and who may use this queue as theirs), checked by the rules both
//! front doors share ([`crate::queue_rules`]), and how a queue's settings read back.

use serde_json::{Value, json};
use strata_client::model::{
    DeadLetter, DeduplicationScope, QueueAttributes, QueueAttributesChange, RedriveAllow, RedrivePermission,
    ThroughputLimit,
};
use strata_common::limits::{self, LONG_POLL_MS_MAX, MESSAGE_BODY_BYTES_MAX};
use strata_common::proto as pb;

use crate::error::ApiError;
use crate::queue_rules::{self, MAX_RECEIVE_COUNT_MAX, NATIVE_ARN_REGION, Refusal};
use crate::routing::Router as Placement;

const RETENTION_S_MIN: u64 = limits::RETENTION_MS_MIN / 1000;
const RETENTION_S_MAX: u64 = limits::RETENTION_MS_MAX / 1000;
const RETENTION_S_DEFAULT: u64 = limits::RETENTION_MS_DEFAULT / 1000;
pub(super) const VISIBILITY_TIMEOUT_S_MAX: u64 = limits::VISIBILITY_TIMEOUT_MS_MAX / 1000;
const VISIBILITY_TIMEOUT_S_DEFAULT: u64 = limits::VISIBILITY_TIMEOUT_MS_DEFAULT / 1000;
pub(super) const DELAY_S_MAX: u64 = limits::DELAY_MS_MAX / 1000;
const RECEIVE_WAIT_S_MAX: u64 = LONG_POLL_MS_MAX / 1000;
/// Smallest maximum message size a queue may set (1 KiB, as SQS).
const MAXIMUM_MESSAGE_BYTES_MIN: u64 = 1024;

fn in_range(field: &str, value: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::invalid(format!("{field} must be {min}-{max}")))
    }
}

pub(crate) fn default_config() -> pb::QueueConfig {
    pb::QueueConfig {
        retention_ms: RETENTION_S_DEFAULT * 1000,
        visibility_timeout_ms: VISIBILITY_TIMEOUT_S_DEFAULT * 1000,
        ..Default::default()
    }
}

/// `base` with `change` applied and checked. `creating` says whether the queue is being created
/// (the only time its kind may be chosen).
pub(super) async fn apply(
    change: &QueueAttributesChange,
    placement: &Placement,
    tenant: &str,
    name: &str,
    base: pb::QueueConfig,
    creating: bool,
) -> Result<pb::QueueConfig, ApiError> {
    let mut config = base;
    if let Some(s) = change.retention_seconds {
        config.retention_ms = in_range("retention_seconds", s, RETENTION_S_MIN, RETENTION_S_MAX)? * 1000;
    }
    if let Some(s) = change.visibility_timeout_seconds {
        config.visibility_timeout_ms = in_range("visibility_timeout_seconds", s, 0, VISIBILITY_TIMEOUT_S_MAX)? * 1000;
    }
    if let Some(s) = change.delay_seconds {
        config.delay_ms = in_range("delay_seconds", s, 0, DELAY_S_MAX)? * 1000;
    }
    if let Some(bytes) = change.maximum_message_bytes {
        config.maximum_message_bytes =
            in_range("maximum_message_bytes", bytes, MAXIMUM_MESSAGE_BYTES_MIN, MESSAGE_BODY_BYTES_MAX as u64)?;
    }
    if let Some(s) = change.receive_wait_seconds {
        config.receive_wait_ms = in_range("receive_wait_seconds", s, 0, RECEIVE_WAIT_S_MAX)? * 1000;
    }
    match (creating, change.fifo) {
        (true, fifo) => config.fifo_queue = fifo.unwrap_or(name.ends_with(queue_rules::FIFO_SUFFIX)),
        (false, Some(fifo)) if fifo != config.fifo_queue => return Err(Refusal::FifoFixed.into()),
        (false, _) => {}
    }
    if let Some(on) = change.content_based_deduplication {
        config.content_based_deduplication = on;
    }
    if let Some(scope) = change.deduplication_scope {
        config.deduplication_per_group = scope == DeduplicationScope::MessageGroup;
    }
    if let Some(limit) = change.throughput_limit {
        config.throughput_per_group = limit == ThroughputLimit::PerMessageGroupId;
    }
    queue_rules::check_fifo_config(name, &config)?;
    match &change.redrive_allow {
        None => {}
        Some(None) => config.redrive_allow_policy.clear(),
        Some(Some(allow)) => {
            let permission = match allow.permission {
                RedrivePermission::AllowAll => "allowAll",
                RedrivePermission::DenyAll => "denyAll",
                RedrivePermission::ByQueue => "byQueue",
            };
            let arns: Vec<Value> = allow
                .source_queues
                .iter()
                .map(|q| json!(queue_rules::queue_arn(NATIVE_ARN_REGION, tenant, q)))
                .collect();
            let sources = (allow.permission == RedrivePermission::ByQueue).then_some(arns.as_slice());
            if allow.permission != RedrivePermission::ByQueue && !allow.source_queues.is_empty() {
                return Err(ApiError::invalid("source_queues go with the by_queue permission only"));
            }
            config.redrive_allow_policy = queue_rules::allow_policy(permission, sources)?;
        }
    }
    match &change.dead_letter {
        None => {}
        Some(None) => queue_rules::clear_dead_letter(&mut config),
        Some(Some(dead_letter)) => {
            let count =
                in_range("dead_letter.max_receive_count", dead_letter.max_receive_count, 1, MAX_RECEIVE_COUNT_MAX)?;
            let arn = queue_rules::queue_arn(NATIVE_ARN_REGION, tenant, &dead_letter.queue);
            queue_rules::set_dead_letter(placement, tenant, name, &mut config, &arn, count).await?;
        }
    }
    Ok(config)
}

/// A queue's settings as the native API shows them.
pub(super) fn attributes(tenant: &str, config: &pb::QueueConfig) -> QueueAttributes {
    let fifo = config.fifo_queue;
    let dead_letter = serde_json::from_str::<Value>(&config.redrive_policy).ok().map(|policy| {
        let arn = policy["deadLetterTargetArn"].as_str().unwrap_or_default();
        DeadLetter {
            queue: queue_rules::queue_name_of_arn(tenant, arn).unwrap_or_default().to_owned(),
            max_receive_count: config.max_receive_count.into(),
        }
    });
    let redrive_allow = serde_json::from_str::<Value>(&config.redrive_allow_policy).ok().map(|policy| {
        let permission = match policy["redrivePermission"].as_str() {
            Some("allowAll") => RedrivePermission::AllowAll,
            Some("byQueue") => RedrivePermission::ByQueue,
            _ => RedrivePermission::DenyAll,
        };
        let source_queues = policy["sourceQueueArns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter_map(|arn| queue_rules::queue_name_of_arn(tenant, arn))
            .map(str::to_owned)
            .collect();
        RedriveAllow { permission, source_queues }
    });
    QueueAttributes {
        retention_seconds: config.retention_ms / 1000,
        visibility_timeout_seconds: config.visibility_timeout_ms / 1000,
        delay_seconds: config.delay_ms / 1000,
        maximum_message_bytes: queue_rules::maximum_message_bytes(config),
        receive_wait_seconds: config.receive_wait_ms / 1000,
        fifo,
        content_based_deduplication: fifo.then_some(config.content_based_deduplication),
        deduplication_scope: fifo.then_some(if config.deduplication_per_group {
            DeduplicationScope::MessageGroup
        } else {
            DeduplicationScope::Queue
        }),
        throughput_limit: fifo.then_some(if config.throughput_per_group {
            ThroughputLimit::PerMessageGroupId
        } else {
            ThroughputLimit::PerQueue
        }),
        dead_letter,
        redrive_allow,
    }
}
