//! Queue rules both front doors (native and SQS) enforce the same way, whatever their spelling:
//! FIFO naming, settings and message ids; dead-letter targets and the allow policies that
//! guard them; and move tasks out of a dead-letter queue.
//!
//! A refusal is a [`Refusal`]: the front door words it in its own dialect (the SQS API keeps
//! the texts AWS clients know). Dead-letter policies are stored as SQS's JSON text
//! (`deadLetterTargetArn`, `maxReceiveCount`; `redrivePermission`, `sourceQueueArns`) with ARNs of
//! the tenant's queues, so either front door reads what the other wrote.

use serde_json::{Value, json};
use strata_common::error::{ErrorKind, StrataError};
use strata_common::limits::{LIST_QUEUES_PAGE_MAX, MESSAGE_BODY_BYTES_MAX};
use strata_common::proto as pb;

use crate::queues;
use crate::routing::Router as Placement;

/// The suffix every FIFO queue's name has, and no other queue's.
pub const FIFO_SUFFIX: &str = ".fifo";
/// Longest RedrivePolicy / RedriveAllowPolicy text.
pub const REDRIVE_POLICY_BYTES_MAX: usize = 8 * 1024;
/// Most source queues a by-queue allow policy may name (SQS's limit).
pub const REDRIVE_ALLOW_SOURCES_MAX: usize = 10;
/// Receives before a message moves to the dead-letter queue: 1 to this.
pub const MAX_RECEIVE_COUNT_MAX: u64 = 1000;
/// Pace of a move task that does not say, and the fastest one may go (messages per second).
pub const MOVE_PER_SECOND_DEFAULT: u64 = 100;
pub const MOVE_PER_SECOND_MAX: u64 = 500;
/// Message attributes per message (SQS's limit, on both APIs).
pub const MESSAGE_ATTRIBUTES_MAX: usize = 10;
/// Longest message attribute name (SQS's limit).
pub const ATTRIBUTE_NAME_CHARS_MAX: usize = 256;
/// How [`Refusal::BadFifoId`] names the id at fault.
pub const GROUP_ID_FIELD: &str = "message group id";
pub const DEDUPLICATION_ID_FIELD: &str = "message deduplication id";
/// Region written into the ARNs of policies set through the native API (which has no region);
/// ARNs of the tenant's own queues are matched on tenant and name only.
pub const NATIVE_ARN_REGION: &str = "strata";

/// Why a queue rule refused a request.
#[derive(Debug)]
pub enum Refusal {
    /// A FIFO queue's name must end with `.fifo`, and only a FIFO queue's may.
    FifoName,
    /// A FIFO-only setting on a standard queue.
    FifoOnlySetting,
    /// Per-group throughput without per-group deduplication.
    ThroughputNeedsGroupScope,
    /// A queue's kind (FIFO or standard) is fixed at creation.
    FifoFixed,
    /// Group or deduplication id on a standard queue.
    FifoIdsOnStandard,
    /// A FIFO message without a group id.
    GroupIdMissing,
    /// A FIFO message with its own delay.
    FifoMessageDelay,
    /// Neither a deduplication id nor content-based deduplication.
    DeduplicationIdMissing,
    /// A group or deduplication id that is not 1-128 letters, digits and punctuation.
    BadFifoId {
        field: &'static str,
        id: String,
    },
    /// The policy text is too long or not JSON of the right shape.
    BadPolicy(&'static str),
    DeadLetterMissing,
    DeadLetterIsItself,
    DeadLetterKindMismatch,
    DeadLetterNotAllowed,
    /// A move task's source that no queue uses as its dead-letter queue.
    NotADeadLetterQueue,
    /// Several queues use the dead-letter queue and the move names no destination.
    MoveDestinationNeeded,
    /// A failure that is not a rule's (metadata or storage unavailable, queue missing).
    Service(StrataError),
}

impl From<StrataError> for Refusal {
    fn from(e: StrataError) -> Self {
        Refusal::Service(e)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::FifoName => write!(f, "a FIFO queue's name ends with {FIFO_SUFFIX}, and only a FIFO queue's does"),
            Refusal::FifoOnlySetting => write!(
                f,
                "content-based deduplication, deduplication scope and throughput limit are for FIFO queues only"
            ),
            Refusal::ThroughputNeedsGroupScope => {
                write!(f, "a per-message-group throughput limit needs deduplication scoped to the message group")
            }
            Refusal::FifoFixed => write!(f, "whether a queue is FIFO is fixed when it is created"),
            Refusal::FifoIdsOnStandard => write!(f, "group and deduplication ids are only valid for FIFO queues"),
            Refusal::GroupIdMissing => write!(f, "a message to a FIFO queue needs a group id"),
            Refusal::FifoMessageDelay => write!(f, "a message to a FIFO queue takes the queue's delay, not its own"),
            Refusal::DeduplicationIdMissing => write!(
                f,
                "a message to this FIFO queue needs a deduplication id (or enable content-based deduplication)"
            ),
            Refusal::BadFifoId { field, id } => {
                write!(f, "{field} '{id}' is invalid: it must be 1-128 characters of letters, digits and punctuation")
            }
            Refusal::BadPolicy(reason) => write!(f, "{reason}"),
            Refusal::DeadLetterMissing => write!(f, "the dead-letter queue does not exist"),
            Refusal::DeadLetterIsItself => write!(f, "a queue cannot be its own dead-letter queue"),
            Refusal::DeadLetterKindMismatch => write!(
                f,
                "the dead-letter queue of a FIFO queue must be a FIFO queue, and of a standard queue a standard queue"
            ),
            Refusal::DeadLetterNotAllowed => {
                write!(f, "the dead-letter queue's allow policy does not allow this queue")
            }
            Refusal::NotADeadLetterQueue => write!(f, "no queue uses this queue as its dead-letter queue"),
            Refusal::MoveDestinationNeeded => write!(
                f,
                "several queues use this dead-letter queue and messages do not record their original queue: name \
                 the destination"
            ),
            Refusal::Service(e) => write!(f, "{}", e.message),
        }
    }
}

impl From<Refusal> for crate::error::ApiError {
    fn from(refusal: Refusal) -> Self {
        crate::error::ApiError(refusal.into())
    }
}

impl From<Refusal> for StrataError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Service(e) => e,
            Refusal::DeadLetterMissing => StrataError::new(ErrorKind::QueueNotFound, refusal.to_string()),
            other => StrataError::invalid(other.to_string()),
        }
    }
}

/// The largest message (body plus attributes) a queue takes.
/// Whether a message body (or string attribute value) may hold `c`: SQS accepts #x9 | #xA |
/// #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF, and so does the native API
/// (a consumer through the other API would otherwise get what it cannot take).
pub fn valid_body_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// SQS's rule for message attribute names: 1-256 of `A-Z a-z 0-9 _ - .`, no leading, trailing or
/// double periods, and no `AWS.` or `Amazon.` prefix.
pub fn valid_attribute_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= ATTRIBUTE_NAME_CHARS_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
}

pub fn maximum_message_bytes(config: &pb::QueueConfig) -> u64 {
    if config.maximum_message_bytes == 0 { MESSAGE_BODY_BYTES_MAX as u64 } else { config.maximum_message_bytes }
}

// ------------------------------------------------------------------------------------- FIFO

/// Checks a queue's FIFO settings against its name and each other.
pub fn check_fifo_config(name: &str, config: &pb::QueueConfig) -> Result<(), Refusal> {
    if name.ends_with(FIFO_SUFFIX) != config.fifo_queue {
        return Err(Refusal::FifoName);
    }
    let fifo_only = config.content_based_deduplication || config.deduplication_per_group || config.throughput_per_group;
    if !config.fifo_queue && fifo_only {
        return Err(Refusal::FifoOnlySetting);
    }
    if config.throughput_per_group && !config.deduplication_per_group {
        return Err(Refusal::ThroughputNeedsGroupScope);
    }
    Ok(())
}

/// SQS allows 1-128 characters of letters, digits and punctuation in group and deduplication ids.
pub fn valid_fifo_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c.is_ascii_punctuation())
}

/// The group and deduplication ids of a message (empty for a standard queue): the deduplication
/// id is the given one, else the SHA-256 of the body when the queue deduplicates by content.
pub fn fifo_ids(
    config: &pb::QueueConfig,
    group: Option<&str>,
    deduplication: Option<&str>,
    has_own_delay: bool,
    body: &[u8],
) -> Result<(String, String), Refusal> {
    if !config.fifo_queue {
        if group.is_some() || deduplication.is_some() {
            return Err(Refusal::FifoIdsOnStandard);
        }
        return Ok((String::new(), String::new()));
    }
    let group = group.ok_or(Refusal::GroupIdMissing)?;
    if has_own_delay {
        return Err(Refusal::FifoMessageDelay);
    }
    let deduplication = match deduplication {
        Some(id) => id.to_string(),
        None if config.content_based_deduplication => {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(body))
        }
        None => return Err(Refusal::DeduplicationIdMissing),
    };
    for (field, id) in [(GROUP_ID_FIELD, group), (DEDUPLICATION_ID_FIELD, deduplication.as_str())] {
        if !valid_fifo_id(id) {
            return Err(Refusal::BadFifoId { field, id: id.to_string() });
        }
    }
    Ok((group.to_string(), deduplication))
}

// ------------------------------------------------------------------------------ dead letters

/// The ARN of a tenant's queue.
pub fn queue_arn(region: &str, tenant: &str, name: &str) -> String {
    format!("arn:aws:sqs:{region}:{tenant}:{name}")
}

/// The queue name of an SQS ARN of `tenant`'s (`arn:aws:sqs:REGION:TENANT:NAME`).
pub fn queue_name_of_arn<'a>(tenant: &str, arn: &'a str) -> Option<&'a str> {
    let parts: Vec<&str> = arn.split(':').collect();
    match parts.as_slice() {
        ["arn", _, "sqs", _, account, name] if *account == tenant && !name.is_empty() => Some(name),
        _ => None,
    }
}

/// Whether a queue's allow policy lets `source` use it as its dead-letter queue.
pub fn redrive_allowed(tenant: &str, allow_policy: &str, source: &str) -> bool {
    if allow_policy.is_empty() {
        return true;
    }
    let Ok(policy) = serde_json::from_str::<Value>(allow_policy) else {
        return false;
    };
    match policy["redrivePermission"].as_str() {
        Some("allowAll") => true,
        Some("byQueue") => policy["sourceQueueArns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|arn| queue_name_of_arn(tenant, arn) == Some(source)),
        _ => false,
    }
}

/// Makes `target` the dead-letter queue of `source` in `config` after checking it exists, is not
/// `source`, is of the same kind and allows `source`. `target_arn` is stored in the policy text.
/// The two queues may be on different shards (their dead letters are handed between them).
pub async fn set_dead_letter(
    placement: &Placement,
    tenant: &str,
    source: &str,
    config: &mut pb::QueueConfig,
    target_arn: &str,
    max_receive_count: u64,
) -> Result<(), Refusal> {
    let target = queue_name_of_arn(tenant, target_arn).ok_or(Refusal::DeadLetterMissing)?;
    if target == source {
        return Err(Refusal::DeadLetterIsItself);
    }
    let dead_letter = queues::info(placement, tenant, target).await.map_err(|e| {
        if e.kind == ErrorKind::QueueNotFound { Refusal::DeadLetterMissing } else { Refusal::Service(e) }
    })?;
    if dead_letter.config.as_ref().is_some_and(|c| c.fifo_queue) != config.fifo_queue {
        return Err(Refusal::DeadLetterKindMismatch);
    }
    let allow = dead_letter.config.as_ref().map_or("", |c| c.redrive_allow_policy.as_str());
    if !redrive_allowed(tenant, allow, source) {
        return Err(Refusal::DeadLetterNotAllowed);
    }
    config.redrive_policy =
        json!({ "deadLetterTargetArn": target_arn, "maxReceiveCount": max_receive_count }).to_string();
    config.dead_letter_queue_id = dead_letter.queue_id;
    config.max_receive_count = max_receive_count as u32;
    Ok(())
}

/// Removes a queue's dead-letter queue from `config`.
pub fn clear_dead_letter(config: &mut pb::QueueConfig) {
    config.redrive_policy.clear();
    config.dead_letter_queue_id = 0;
    config.max_receive_count = 0;
}

/// The allow-policy text for a permission (`allowAll`, `denyAll`, `byQueue`) and its sources.
pub fn allow_policy(permission: &str, source_arns: Option<&[Value]>) -> Result<String, Refusal> {
    let policy = match (permission, source_arns) {
        ("allowAll" | "denyAll", None) => json!({ "redrivePermission": permission }),
        ("byQueue", Some(arns))
            if (1..=REDRIVE_ALLOW_SOURCES_MAX).contains(&arns.len()) && arns.iter().all(Value::is_string) =>
        {
            json!({ "redrivePermission": permission, "sourceQueueArns": arns })
        }
        _ => {
            return Err(Refusal::BadPolicy(
                "the permission must be allow-all, deny-all, or by-queue with 1 to 10 source queues",
            ));
        }
    };
    Ok(policy.to_string())
}

/// The tenant's queues whose dead-letter queue is `dead_letter_queue_id`, in name order after
/// `start_after`: at most `max`, and the name to go on after when there are more.
pub async fn dead_letter_sources(
    placement: &Placement,
    tenant: &str,
    dead_letter_queue_id: u64,
    mut start_after: String,
    max: usize,
) -> Result<(Vec<pb::QueueInfo>, Option<String>), StrataError> {
    let mut sources = Vec::new();
    // Pages through the tenant's queues (metadata keeps them by name).
    loop {
        let page = placement.metadata.list_queues(tenant, "", &start_after, LIST_QUEUES_PAGE_MAX).await?;
        for queue in page.queues {
            if queue.config.as_ref().is_some_and(|c| c.dead_letter_queue_id == dead_letter_queue_id) {
                if sources.len() == max {
                    return Ok((sources, Some(start_after)));
                }
                start_after.clone_from(&queue.name);
                sources.push(queue);
            } else {
                start_after = queue.name;
            }
        }
        if !page.truncated {
            return Ok((sources, None));
        }
    }
}

// -------------------------------------------------------------------------------- move tasks

/// Starts moving a dead-letter queue's messages to `destination` (by default its only source
/// queue) at `max_per_second`; answers the task id.
pub async fn start_move_task(
    placement: &Placement,
    tenant: &str,
    source: &pb::QueueInfo,
    destination: Option<&str>,
    max_per_second: u64,
) -> Result<u64, Refusal> {
    // Two are enough to tell none, one and several.
    let (mut sources, _) = dead_letter_sources(placement, tenant, source.queue_id, String::new(), 2).await?;
    if sources.is_empty() {
        return Err(Refusal::NotADeadLetterQueue);
    }
    let destination = match destination {
        Some(name) => queues::info(placement, tenant, name).await?,
        None if sources.len() == 1 => sources.remove(0),
        None => return Err(Refusal::MoveDestinationNeeded),
    };
    let destination_queue_id = destination.queue_id;
    let task = queues::on_queue(placement, tenant, &source.name, |mut c, q| async move {
        c.start_move_task(pb::StartMoveTaskRequest {
            source: Some(q),
            destination_queue_id,
            max_per_second: max_per_second as u32,
        })
        .await
    })
    .await?;
    Ok(task.task_id)
}

/// The move tasks of a dead-letter queue, newest first, with the names of their destinations.
pub async fn list_move_tasks(
    placement: &Placement,
    tenant: &str,
    source: &str,
) -> Result<Vec<(pb::MoveTaskInfo, String)>, StrataError> {
    let tasks =
        queues::on_queue(placement, tenant, source, |mut c, q| async move { c.list_move_tasks(q).await }).await?.tasks;
    // Destinations by incarnation, to name them.
    let page = placement.metadata.list_queues(tenant, "", "", LIST_QUEUES_PAGE_MAX).await?;
    let name_of =
        |queue_id: u64| page.queues.iter().find(|q| q.queue_id == queue_id).map(|q| q.name.clone()).unwrap_or_default();
    Ok(tasks
        .into_iter()
        .map(|task| {
            let destination = name_of(task.destination_queue_id);
            (task, destination)
        })
        .collect())
}

/// Cancels a running move task of a dead-letter queue; answers the task as it stopped.
pub async fn cancel_move_task(
    placement: &Placement,
    tenant: &str,
    source: &str,
    task_id: u64,
) -> Result<pb::MoveTaskInfo, StrataError> {
    queues::on_queue(placement, tenant, source, |mut c, q| async move {
        c.cancel_move_task(pb::CancelMoveTaskRequest { source: Some(q), task_id }).await
    })
    .await
}
