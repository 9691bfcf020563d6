//! The SQS actions on the JSON protocol's shapes (`serde_json` values named as in the SQS API
//! reference), run on the same queues as the native API through [`crate::queues`].
//!
//! Validation follows SQS: missing parameters are `MissingParameter`, out-of-range values
//! `InvalidParameterValue`, unknown queue attributes `InvalidAttributeName`; batch calls check
//! the batch as a whole (`EmptyBatchRequest`, `TooManyEntriesInBatchRequest`,
//! `BatchEntryIdsNotDistinct`, `InvalidBatchEntryId`, `BatchRequestTooLong`) and report
//! each entry's own failure in `Failed` while the other entries go through.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use strata_common::error::{ErrorKind, StrataError};
use strata_common::limits::{self, LIST_QUEUES_PAGE_MAX, LONG_POLL_MS_MAX, MESSAGE_BODY_BYTES_MAX};
use strata_common::proto as pb;

use super::error::SqsError;
use super::{Ctx, md5};
use crate::metering::{CUSTOMER_ATTRIBUTE, Charge, message_payload_bytes};
use crate::queue_rules::{
    self, ATTRIBUTE_NAME_CHARS_MAX, GROUP_ID_FIELD, MESSAGE_ATTRIBUTES_MAX, MOVE_PER_SECOND_DEFAULT,
    MOVE_PER_SECOND_MAX, REDRIVE_POLICY_BYTES_MAX, Refusal, valid_attribute_name, valid_body_char,
};
use crate::queues;

/// Longest batch entry id (SQS's limit).
const BATCH_ENTRY_ID_CHARS_MAX: usize = 80;
/// Smallest MaximumMessageSize a queue may set (SQS: 1 KiB).
const MAXIMUM_MESSAGE_SIZE_MIN: u64 = 1024;

const DELAY_S_MAX: u64 = limits::DELAY_MS_MAX / 1000;
const RETENTION_S_MIN: u64 = limits::RETENTION_MS_MIN / 1000;
const RETENTION_S_MAX: u64 = limits::RETENTION_MS_MAX / 1000;
const VISIBILITY_TIMEOUT_S_MAX: u64 = limits::VISIBILITY_TIMEOUT_MS_MAX / 1000;
const WAIT_S_MAX: u64 = LONG_POLL_MS_MAX / 1000;

/// Runs one action.
pub async fn dispatch(ctx: &Ctx<'_>, action: &str, input: Value) -> Result<Value, SqsError> {
    match action {
        "CreateQueue" => create_queue(ctx, &input).await,
        "GetQueueUrl" => get_queue_url(ctx, &input).await,
        "ListQueues" => list_queues(ctx, &input).await,
        "DeleteQueue" => delete_queue(ctx, &input).await,
        "GetQueueAttributes" => get_queue_attributes(ctx, &input).await,
        "SetQueueAttributes" => set_queue_attributes(ctx, &input).await,
        "PurgeQueue" => purge_queue(ctx, &input).await,
        "SendMessage" => send_message(ctx, &input).await,
        "SendMessageBatch" => send_message_batch(ctx, &input).await,
        "ReceiveMessage" => receive_message(ctx, &input).await,
        "DeleteMessage" => delete_message(ctx, &input).await,
        "DeleteMessageBatch" => delete_message_batch(ctx, &input).await,
        "ChangeMessageVisibility" => change_message_visibility(ctx, &input).await,
        "ChangeMessageVisibilityBatch" => change_message_visibility_batch(ctx, &input).await,
        "TagQueue" => tag_queue(ctx, &input).await,
        "UntagQueue" => untag_queue(ctx, &input).await,
        "ListQueueTags" => list_queue_tags(ctx, &input).await,
        "ListDeadLetterSourceQueues" => list_dead_letter_source_queues(ctx, &input).await,
        "StartMessageMoveTask" => start_message_move_task(ctx, &input).await,
        "ListMessageMoveTasks" => list_message_move_tasks(ctx, &input).await,
        "CancelMessageMoveTask" => cancel_message_move_task(ctx, &input).await,
        "AddPermission" | "RemovePermission" => Err(SqsError::unsupported_operation(format!(
            "{action} is not supported: access is granted per tenant access key."
        ))),
        other => Err(SqsError::invalid_action(format!("The action {other} is not valid for this endpoint."))),
    }
}

// ------------------------------------------------------------------------------- input access

fn string<'a>(input: &'a Value, name: &str) -> Result<Option<&'a str>, SqsError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(SqsError::invalid_parameter_value(format!("{name} must be a string."))),
    }
}

fn required_string<'a>(input: &'a Value, name: &str) -> Result<&'a str, SqsError> {
    string(input, name)?.ok_or_else(|| SqsError::missing(name))
}

/// An integer parameter within `min..=max`, refused as SQS words it.
fn integer(input: &Value, name: &str, min: u64, max: u64) -> Result<Option<u64>, SqsError> {
    integer_for(input, name, min, max, || match name {
        "MaxNumberOfMessages" => format!("Must be between {min} and {max}, if provided."),
        "DelaySeconds" => format!("DelaySeconds must be >= {min} and <= {max}."),
        _ => format!("Must be >= {min} and <= {max}, if provided."),
    })
}

/// An integer parameter within `min..=max`; out of it, SQS's "Value .. is invalid" with the
/// reason `reason` words (only then).
fn integer_for(
    input: &Value,
    name: &str,
    min: u64,
    max: u64,
    reason: impl FnOnce() -> String,
) -> Result<Option<u64>, SqsError> {
    let value = match input.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    match value {
        Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
        _ => Err(invalid_value(name, &input.get(name).map(raw_text).unwrap_or_default(), &reason())),
    }
}

/// SQS's refusal of a parameter's value.
fn invalid_value(name: &str, value: &str, reason: &str) -> SqsError {
    SqsError::invalid_parameter_value(format!("Value {value} for parameter {name} is invalid. Reason: {reason}"))
}

/// A JSON value as the caller wrote it (a string without its quotes).
fn raw_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A message's visibility timeout in ChangeMessageVisibility(Batch).
fn visibility_change_s(entry: &Value) -> Result<u64, SqsError> {
    let beyond =
        || format!("Total VisibilityTimeout for the message is beyond the limit [{VISIBILITY_TIMEOUT_S_MAX} seconds].");
    integer_for(entry, "VisibilityTimeout", 0, VISIBILITY_TIMEOUT_S_MAX, beyond)?
        .ok_or_else(|| SqsError::missing("VisibilityTimeout"))
}

fn string_list<'a>(input: &'a Value, name: &str) -> Result<Vec<&'a str>, SqsError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or_else(|| SqsError::invalid_parameter_value(format!("{name} must hold strings."))))
            .collect(),
        Some(_) => Err(SqsError::invalid_parameter_value(format!("{name} must be a list of strings."))),
    }
}

fn string_map<'a>(input: &'a Value, name: &str) -> Result<Vec<(&'a str, &'a str)>, SqsError> {
    match input.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.as_str(), v))
                    .ok_or_else(|| SqsError::invalid_parameter_value(format!("{name}.{k} must be a string.")))
            })
            .collect(),
        Some(_) => Err(SqsError::invalid_parameter_value(format!("{name} must be a map of strings."))),
    }
}

/// The queue a call's `QueueUrl` names (the queue it is charged to).
async fn queue_of(ctx: &Ctx<'_>, input: &Value) -> Result<pb::QueueInfo, SqsError> {
    let name = ctx.queue_name(required_string(input, "QueueUrl")?)?;
    let info = queues::info(&ctx.state.placement, ctx.tenant(), name).await?;
    ctx.charge.lock().queue = info.name.clone();
    Ok(info)
}

// ------------------------------------------------------------------------------------ queues

/// Applies SQS queue attributes onto `config`. FIFO, dead-letter, policy and encryption
/// attributes are refused for now rather than silently ignored.
fn apply_queue_attributes(config: &mut pb::QueueConfig, attributes: &[(&str, &str)]) -> Result<(), SqsError> {
    for &(name, value) in attributes {
        let number =
            |min: u64, max: u64| -> Result<u64, SqsError> {
                value.parse::<u64>().ok().filter(|v| (min..=max).contains(v)).ok_or_else(|| {
                    SqsError::invalid_attribute_value(format!("Invalid value for the parameter {name}."))
                })
            };
        match name {
            "DelaySeconds" => config.delay_ms = number(0, DELAY_S_MAX)? * 1000,
            "MaximumMessageSize" => {
                config.maximum_message_bytes = number(MAXIMUM_MESSAGE_SIZE_MIN, MESSAGE_BODY_BYTES_MAX as u64)?
            }
            "MessageRetentionPeriod" => config.retention_ms = number(RETENTION_S_MIN, RETENTION_S_MAX)? * 1000,
            "ReceiveMessageWaitTimeSeconds" => config.receive_wait_ms = number(0, WAIT_S_MAX)? * 1000,
            "VisibilityTimeout" => config.visibility_timeout_ms = number(0, VISIBILITY_TIMEOUT_S_MAX)? * 1000,
            // Messages are not encrypted at rest by this service: only "false" is true to say.
            "SqsManagedSseEnabled" if value == "false" => {}
            "SqsManagedSseEnabled" => {
                return Err(SqsError::invalid_attribute_value(
                    "SqsManagedSseEnabled: server-side encryption is not supported by this service yet.",
                ));
            }
            "FifoQueue" | "ContentBasedDeduplication" => {
                let flag = match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(SqsError::invalid_attribute_value(format!(
                            "Invalid value for the parameter {name}: must be true or false."
                        )));
                    }
                };
                if name == "FifoQueue" {
                    config.fifo_queue = flag;
                } else {
                    config.content_based_deduplication = flag;
                }
            }
            "DeduplicationScope" => {
                config.deduplication_per_group = match value {
                    "messageGroup" => true,
                    "queue" => false,
                    _ => {
                        return Err(SqsError::invalid_attribute_value(
                            "Invalid value for the parameter DeduplicationScope: must be messageGroup or queue.",
                        ));
                    }
                }
            }
            "FifoThroughputLimit" => {
                config.throughput_per_group = match value {
                    "perMessageGroupId" => true,
                    "perQueue" => false,
                    _ => {
                        return Err(SqsError::invalid_attribute_value(
                            "Invalid value for the parameter FifoThroughputLimit: must be perMessageGroupId or perQueue.",
                        ));
                    }
                }
            }
            // Checked against metadata by `resolve_redrive`.
            "RedrivePolicy" | "RedriveAllowPolicy" => {}
            _ => {
                return Err(SqsError::invalid_attribute_name(format!("Unknown Attribute {name}.")));
            }
        }
    }
    Ok(())
}

/// The SQS wording of a queue rule's refusal (the texts AWS clients know); `attribute` names
/// the policy attribute a dead-letter refusal is about.
fn refused(refusal: Refusal, attribute: &str) -> SqsError {
    match refusal {
        Refusal::FifoName => SqsError::invalid_parameter_value(
            "The name of a FIFO queue can only include alphanumeric characters, hyphens, or underscores, must end \
             with .fifo suffix and be 1 to 80 in length.",
        ),
        Refusal::FifoOnlySetting => SqsError::invalid_attribute_name(
            "ContentBasedDeduplication, DeduplicationScope and FifoThroughputLimit are for FIFO queues only.",
        ),
        Refusal::ThroughputNeedsGroupScope => SqsError::invalid_attribute_value(
            "FifoThroughputLimit perMessageGroupId needs DeduplicationScope messageGroup.",
        ),
        Refusal::FifoFixed => {
            SqsError::invalid_attribute_value("FifoQueue cannot be changed after the queue is created.")
        }
        Refusal::FifoIdsOnStandard => SqsError::invalid_parameter_value(
            "MessageGroupId and MessageDeduplicationId are only valid for FIFO queues.",
        ),
        Refusal::GroupIdMissing => SqsError::missing("MessageGroupId"),
        // `fifo_ids` below words it with the value.
        Refusal::FifoMessageDelay => SqsError::invalid_parameter_value(
            "Value for parameter DelaySeconds is invalid. Reason: The request include parameter that is not valid \
             for this queue type.",
        ),
        Refusal::DeduplicationIdMissing => SqsError::invalid_parameter_value(
            "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided \
             explicitly",
        ),
        Refusal::BadFifoId { field, id } => {
            let name = if field == GROUP_ID_FIELD { "MessageGroupId" } else { "MessageDeduplicationId" };
            invalid_value(
                name,
                &id,
                &format!("{name} can only include alphanumeric and punctuation characters. 1 to 128 in length."),
            )
        }
        Refusal::BadPolicy(_) => redrive_error(
            attribute,
            "redrivePermission must be allowAll, denyAll, or byQueue with 1 to 10 sourceQueueArns.",
        ),
        Refusal::DeadLetterMissing => redrive_error(attribute, "Dead letter target does not exist."),
        Refusal::DeadLetterIsItself => redrive_error(attribute, "a queue cannot be its own dead-letter queue."),
        Refusal::DeadLetterKindMismatch => redrive_error(
            attribute,
            "the dead-letter queue of a FIFO queue must be a FIFO queue, and of a standard queue a standard queue.",
        ),
        Refusal::DeadLetterNotAllowed => {
            redrive_error(attribute, "the dead-letter queue's RedriveAllowPolicy does not allow this queue.")
        }
        Refusal::NotADeadLetterQueue => SqsError::invalid_parameter_value(
            "Source queue must be configured as a Dead Letter Queue (no queue names it in its RedrivePolicy).",
        ),
        Refusal::MoveDestinationNeeded => SqsError::invalid_parameter_value(
            "DestinationArn is required: several queues use this dead-letter queue and messages do not record \
             their original queue.",
        ),
        Refusal::Service(e) => e.into(),
    }
}

/// SQS's refusal of a queue name.
const QUEUE_NAME_RULE: &str = "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length";

fn validate_sqs_queue_name(name: &str) -> Result<(), SqsError> {
    strata_common::names::validate_queue_name(name).map_err(|_| SqsError::invalid_parameter_value(QUEUE_NAME_RULE))
}

async fn create_queue(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let name = required_string(input, "QueueName")?;
    validate_sqs_queue_name(name)?;
    let tags = string_map(input, "tags")?;
    let attributes = string_map(input, "Attributes")?;
    let mut config = crate::api::default_config();
    apply_queue_attributes(&mut config, &attributes)?;
    queue_rules::check_fifo_config(name, &config).map_err(|r| match r {
        // A .fifo name of a standard queue is a bad queue name.
        Refusal::FifoName if !config.fifo_queue => SqsError::invalid_parameter_value(QUEUE_NAME_RULE),
        other => refused(other, "Attributes"),
    })?;
    resolve_redrive(ctx, name, &mut config, &attributes).await?;
    let created = queues::create_queue(&ctx.state.placement, ctx.tenant(), name, config).await;
    match created {
        Ok(_) => {}
        // As SQS: a create that names no attributes gets an existing queue's URL, whatever its
        // settings (only attributes that differ from the queue's are a conflict).
        Err(e) if e.kind == ErrorKind::QueueAlreadyExists && attributes.is_empty() => {
            return Ok(json!({ "QueueUrl": ctx.queue_url(name) }));
        }
        Err(e) if e.kind == ErrorKind::QueueAlreadyExists => {
            return Err(already_exists(ctx, name, &attributes).await);
        }
        Err(e) => return Err(e.into()),
    }
    if !tags.is_empty() {
        let tags = tags.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ctx.state.placement.metadata.tag_queue(ctx.tenant(), name, tags).await?;
    }
    Ok(json!({ "QueueUrl": ctx.queue_url(name) }))
}

async fn get_queue_url(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let name = required_string(input, "QueueName")?;
    if string(input, "QueueOwnerAWSAccountId")?.is_some_and(|owner| owner != ctx.tenant()) {
        return Err(SqsError::no_such_queue());
    }
    validate_sqs_queue_name(name).map_err(|_| SqsError::no_such_queue())?;
    queues::info(&ctx.state.placement, ctx.tenant(), name).await?;
    Ok(json!({ "QueueUrl": ctx.queue_url(name) }))
}

async fn list_queues(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let prefix = string(input, "QueueNamePrefix")?.unwrap_or("");
    let max_results = integer(input, "MaxResults", 1, u64::from(LIST_QUEUES_PAGE_MAX))?;
    let start_after = match string(input, "NextToken")? {
        Some(token) => decode_next_token(token)?,
        None => String::new(),
    };
    let max = max_results.map_or(LIST_QUEUES_PAGE_MAX, |m| m as u32);
    let page = ctx.state.placement.metadata.list_queues(ctx.tenant(), prefix, &start_after, max).await?;
    let urls: Vec<String> = page.queues.iter().map(|q| ctx.queue_url(&q.name)).collect();
    let mut out = Map::new();
    out.insert("QueueUrls".into(), json!(urls));
    // As SQS: a next token only when the caller paginates (gave MaxResults).
    if max_results.is_some()
        && page.truncated
        && let Some(last) = page.queues.last()
    {
        out.insert("NextToken".into(), json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&last.name)));
    }
    Ok(Value::Object(out))
}

fn decode_next_token(token: &str) -> Result<String, SqsError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| SqsError::invalid_parameter_value("Invalid NextToken: pass the token a ListQueues returned."))
}

async fn delete_queue(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let name = ctx.queue_name(required_string(input, "QueueUrl")?)?;
    queues::delete_queue(&ctx.state.placement, ctx.tenant(), name).await?;
    Ok(json!({}))
}

/// SQS queue attributes this service never sets (no access policies, no KMS, no FIFO or
/// dead-letter queues yet): asking for them is valid and answers nothing.
const UNSET_QUEUE_ATTRIBUTE_NAMES: [&str; 3] = ["Policy", "KmsMasterKeyId", "KmsDataKeyReusePeriodSeconds"];

const QUEUE_ATTRIBUTE_NAMES: [&str; 18] = [
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "SqsManagedSseEnabled",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "QueueArn",
];

async fn get_queue_attributes(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    let requested = string_list(input, "AttributeNames")?;
    let mut wanted: Vec<&str> = Vec::new();
    for name in requested {
        if name == "All" {
            wanted = QUEUE_ATTRIBUTE_NAMES.to_vec();
            break;
        }
        if UNSET_QUEUE_ATTRIBUTE_NAMES.contains(&name) {
            continue; // valid in SQS but never set here: omitted, as SQS omits unset attributes
        }
        if !QUEUE_ATTRIBUTE_NAMES.contains(&name) {
            return Err(SqsError::invalid_attribute_name(format!("Unknown Attribute {name}.")));
        }
        wanted.push(name);
    }
    if wanted.is_empty() {
        return Ok(json!({}));
    }
    let needs_stats = wanted.iter().any(|n| n.starts_with("Approximate"));
    let stats = if needs_stats {
        Some(
            queues::on_queue(&ctx.state.placement, ctx.tenant(), &info.name, |mut c, q| async move {
                c.get_queue_stats(q).await
            })
            .await?,
        )
    } else {
        None
    };
    let config = info.config.clone().unwrap_or_default();
    let mut attributes = Map::new();
    for name in wanted {
        let value = match name {
            "ApproximateNumberOfMessages" => stats.map(|s| s.visible).unwrap_or(0).to_string(),
            "ApproximateNumberOfMessagesNotVisible" => stats.map(|s| s.in_flight).unwrap_or(0).to_string(),
            "ApproximateNumberOfMessagesDelayed" => stats.map(|s| s.delayed).unwrap_or(0).to_string(),
            _ => match setting_attribute(ctx, &info, &config, name) {
                Some(value) => value,
                None => continue,
            },
        };
        attributes.insert(name.to_string(), Value::String(value));
    }
    Ok(json!({ "Attributes": attributes }))
}

/// A queue attribute that the queue's settings hold (not its counts), as SQS answers it; `None`
/// when the queue has none of that name (FIFO attributes of a standard queue, unset policies).
fn setting_attribute(ctx: &Ctx<'_>, info: &pb::QueueInfo, config: &pb::QueueConfig, name: &str) -> Option<String> {
    let value = match name {
        "CreatedTimestamp" => (info.created_ms / 1000).to_string(),
        "LastModifiedTimestamp" => (info.modified_ms / 1000).to_string(),
        "DelaySeconds" => (config.delay_ms / 1000).to_string(),
        "MaximumMessageSize" => queue_rules::maximum_message_bytes(config).to_string(),
        "MessageRetentionPeriod" => (config.retention_ms / 1000).to_string(),
        "ReceiveMessageWaitTimeSeconds" => (config.receive_wait_ms / 1000).to_string(),
        "VisibilityTimeout" => (config.visibility_timeout_ms / 1000).to_string(),
        "QueueArn" => ctx.queue_arn(&info.name),
        "SqsManagedSseEnabled" => "false".to_string(),
        // FIFO attributes exist on FIFO queues only.
        "FifoQueue" if config.fifo_queue => "true".to_string(),
        "ContentBasedDeduplication" if config.fifo_queue => config.content_based_deduplication.to_string(),
        "DeduplicationScope" if config.fifo_queue => {
            if config.deduplication_per_group { "messageGroup" } else { "queue" }.to_string()
        }
        "FifoThroughputLimit" if config.fifo_queue => {
            if config.throughput_per_group { "perMessageGroupId" } else { "perQueue" }.to_string()
        }
        // Answered only when set, as SQS does.
        "RedrivePolicy" if !config.redrive_policy.is_empty() => config.redrive_policy.clone(),
        "RedriveAllowPolicy" if !config.redrive_allow_policy.is_empty() => config.redrive_allow_policy.clone(),
        _ => return None,
    };
    Some(value)
}

/// SQS's answer to a create of an existing queue with attributes: it names the first one that
/// differs from the queue's.
async fn already_exists(ctx: &Ctx<'_>, name: &str, attributes: &[(&str, &str)]) -> SqsError {
    let differing = match queues::info(&ctx.state.placement, ctx.tenant(), name).await {
        Ok(info) => {
            let config = info.config.clone().unwrap_or_default();
            attributes
                .iter()
                .find(|(attribute, value)| setting_attribute(ctx, &info, &config, attribute).as_deref() != Some(*value))
                .map(|(attribute, _)| *attribute)
        }
        Err(_) => None,
    };
    match differing {
        Some(attribute) => SqsError::queue_name_exists(format!(
            "A queue already exists with the same name and a different value for attribute {attribute}"
        )),
        None => StrataError::new(ErrorKind::QueueAlreadyExists, "").into(),
    }
}

async fn set_queue_attributes(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    let attributes = string_map(input, "Attributes")?;
    if attributes.is_empty() {
        return Err(SqsError::missing("Attributes"));
    }
    let mut config = info.config.clone().unwrap_or_default();
    if attributes.iter().any(|(name, value)| *name == "FifoQueue" && *value != config.fifo_queue.to_string()) {
        return Err(refused(Refusal::FifoFixed, "FifoQueue"));
    }
    apply_queue_attributes(&mut config, &attributes)?;
    queue_rules::check_fifo_config(&info.name, &config).map_err(|r| refused(r, "Attributes"))?;
    resolve_redrive(ctx, &info.name, &mut config, &attributes).await?;
    queues::set_config(&ctx.state.placement, ctx.tenant(), &info.name, config).await?;
    Ok(json!({}))
}

fn redrive_error(attribute: &str, reason: &str) -> SqsError {
    SqsError::invalid_parameter_value(format!("Value for parameter {attribute} is invalid. Reason: {reason}"))
}

/// Checks and applies `RedrivePolicy` and `RedriveAllowPolicy` for queue `source`.
async fn resolve_redrive(
    ctx: &Ctx<'_>,
    source: &str,
    config: &mut pb::QueueConfig,
    attributes: &[(&str, &str)],
) -> Result<(), SqsError> {
    for &(name, value) in attributes {
        if value.len() > REDRIVE_POLICY_BYTES_MAX && (name == "RedrivePolicy" || name == "RedriveAllowPolicy") {
            return Err(redrive_error(name, "the policy is too long."));
        }
        match name {
            "RedrivePolicy" if value.is_empty() => {
                queue_rules::clear_dead_letter(config);
            }
            "RedrivePolicy" => {
                let policy: Value =
                    serde_json::from_str(value).map_err(|_| redrive_error(name, "it is not valid JSON."))?;
                let arn = policy["deadLetterTargetArn"]
                    .as_str()
                    .ok_or_else(|| redrive_error(name, "deadLetterTargetArn is missing."))?;
                let max_receive_count = match &policy["maxReceiveCount"] {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.parse().ok(),
                    _ => None,
                }
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| redrive_error(name, "maxReceiveCount must be an integer from 1 to 1000."))?;
                queue_rules::set_dead_letter(
                    &ctx.state.placement,
                    ctx.tenant(),
                    source,
                    config,
                    arn,
                    max_receive_count,
                )
                .await
                .map_err(|r| refused(r, name))?;
            }
            "RedriveAllowPolicy" if value.is_empty() => config.redrive_allow_policy.clear(),
            "RedriveAllowPolicy" => {
                let policy: Value =
                    serde_json::from_str(value).map_err(|_| redrive_error(name, "it is not valid JSON."))?;
                let permission = policy["redrivePermission"].as_str().unwrap_or_default();
                let sources = match policy.get("sourceQueueArns") {
                    None => None,
                    Some(Value::Array(arns)) => Some(arns.as_slice()),
                    Some(_) => Some(&[][..]),
                };
                config.redrive_allow_policy =
                    queue_rules::allow_policy(permission, sources).map_err(|r| refused(r, name))?;
            }
            _ => {}
        }
    }
    Ok(())
}

async fn list_dead_letter_source_queues(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let dead_letter = queue_of(ctx, input).await?;
    let max_results = integer(input, "MaxResults", 1, u64::from(LIST_QUEUES_PAGE_MAX))?;
    let start_after = match string(input, "NextToken")? {
        Some(token) => decode_next_token(token)?,
        None => String::new(),
    };
    let max = max_results.map_or(LIST_QUEUES_PAGE_MAX as usize, |m| m as usize);
    let (sources, next) =
        queue_rules::dead_letter_sources(&ctx.state.placement, ctx.tenant(), dead_letter.queue_id, start_after, max)
            .await?;
    let urls: Vec<String> = sources.iter().map(|q| ctx.queue_url(&q.name)).collect();
    let mut out = json!({ "queueUrls": urls });
    // As ListQueues: a next token only when the caller paginates (gave MaxResults).
    if let Some(token) = next.filter(|_| max_results.is_some()) {
        out["NextToken"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token));
    }
    Ok(out)
}

async fn purge_queue(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    queues::on_queue(&ctx.state.placement, ctx.tenant(), &info.name, |mut c, q| async move { c.purge(q).await })
        .await?;
    Ok(json!({}))
}

async fn tag_queue(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let name = ctx.queue_name(required_string(input, "QueueUrl")?)?;
    let tags = string_map(input, "Tags")?;
    if tags.is_empty() {
        return Err(SqsError::missing("Tags"));
    }
    let tags = tags.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ctx.state.placement.metadata.tag_queue(ctx.tenant(), name, tags).await?;
    Ok(json!({}))
}

async fn untag_queue(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let name = ctx.queue_name(required_string(input, "QueueUrl")?)?;
    let keys: Vec<String> = string_list(input, "TagKeys")?.into_iter().map(str::to_string).collect();
    if keys.is_empty() {
        return Err(SqsError::missing("TagKeys"));
    }
    ctx.state.placement.metadata.untag_queue(ctx.tenant(), name, keys).await?;
    Ok(json!({}))
}

async fn list_queue_tags(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let name = ctx.queue_name(required_string(input, "QueueUrl")?)?;
    strata_common::names::validate_queue_name(name).map_err(|_| SqsError::no_such_queue())?;
    // From metadata, not the placement cache: tags change without a new incarnation.
    let info = ctx.state.placement.metadata.get_queue(ctx.tenant(), name).await?;
    let tags: BTreeMap<&String, &String> = info.tags.iter().collect();
    Ok(json!({ "Tags": tags }))
}

// -------------------------------------------------------------------------------- move tasks

/// A queue named by an ARN of the caller's tenant, as `attribute` of the request.
async fn queue_of_arn(ctx: &Ctx<'_>, input: &Value, attribute: &str) -> Result<pb::QueueInfo, SqsError> {
    let arn = required_string(input, attribute)?;
    let name = queue_rules::queue_name_of_arn(ctx.tenant(), arn).ok_or_else(SqsError::no_such_queue)?;
    Ok(queues::info(&ctx.state.placement, ctx.tenant(), name).await?)
}

/// Task handles name the source queue and the task: `base64url("<queue name>/<task id>")`.
fn task_handle(source: &str, task_id: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{source}/{task_id}"))
}

fn parse_task_handle(handle: &str) -> Option<(String, u64)> {
    let text = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(handle).ok()?).ok()?;
    let (source, id) = text.rsplit_once('/')?;
    Some((source.to_string(), id.parse().ok()?))
}

async fn start_message_move_task(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let source = queue_of_arn(ctx, input, "SourceArn").await?;
    let rate =
        integer(input, "MaxNumberOfMessagesPerSecond", 1, MOVE_PER_SECOND_MAX)?.unwrap_or(MOVE_PER_SECOND_DEFAULT);
    let destination = match string(input, "DestinationArn")? {
        Some(_) => Some(queue_of_arn(ctx, input, "DestinationArn").await?.name),
        None => None,
    };
    let task_id =
        queue_rules::start_move_task(&ctx.state.placement, ctx.tenant(), &source, destination.as_deref(), rate)
            .await
            .map_err(|r| refused(r, "DestinationArn"))?;
    Ok(json!({ "TaskHandle": task_handle(&source.name, task_id) }))
}

async fn list_message_move_tasks(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let source = queue_of_arn(ctx, input, "SourceArn").await?;
    let max = integer(input, "MaxResults", 1, 10)?.unwrap_or(1) as usize;
    let tasks = queue_rules::list_move_tasks(&ctx.state.placement, ctx.tenant(), &source.name).await?;
    let results: Vec<Value> = tasks
        .iter()
        .take(max)
        .map(|(t, destination)| {
            let mut result = json!({
                "Status": t.status,
                "SourceArn": ctx.queue_arn(&source.name),
                "DestinationArn": ctx.queue_arn(destination),
                "MaxNumberOfMessagesPerSecond": t.max_per_second,
                "ApproximateNumberOfMessagesMoved": t.moved,
                "ApproximateNumberOfMessagesToMove": t.to_move,
                "StartedTimestamp": t.started_ms,
            });
            if t.status == "RUNNING" {
                result["TaskHandle"] = json!(task_handle(&source.name, t.task_id));
            }
            if !t.failure_reason.is_empty() {
                result["FailureReason"] = json!(t.failure_reason);
            }
            result
        })
        .collect();
    Ok(json!({ "Results": results }))
}

async fn cancel_message_move_task(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let handle = required_string(input, "TaskHandle")?;
    let (source, task_id) = parse_task_handle(handle)
        .ok_or_else(|| SqsError::invalid_parameter_value("Value for parameter TaskHandle is invalid."))?;
    let task = queue_rules::cancel_move_task(&ctx.state.placement, ctx.tenant(), &source, task_id).await.map_err(
        |e| match e.kind {
            ErrorKind::QueueNotFound => SqsError::no_such_queue(),
            _ => SqsError::invalid_parameter_value(format!("The task cannot be cancelled: {}", e.message)),
        },
    )?;
    Ok(json!({ "ApproximateNumberOfMessagesMoved": task.moved }))
}

// ---------------------------------------------------------------------------------- messages

/// Parses `MessageAttributes` into the stored form; answers the bytes they count toward the
/// message size (names, types and values, as SQS counts).
fn message_attributes(input: &Value) -> Result<(HashMap<String, pb::MessageAttribute>, usize), SqsError> {
    let Some(value) = input.get("MessageAttributes").filter(|v| !v.is_null()) else {
        return Ok((HashMap::new(), 0));
    };
    let map = value.as_object().ok_or_else(|| SqsError::invalid_parameter_value("MessageAttributes must be a map."))?;
    if map.len() > MESSAGE_ATTRIBUTES_MAX {
        return Err(SqsError::invalid_parameter_value(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [{MESSAGE_ATTRIBUTES_MAX}].",
            map.len()
        )));
    }
    let mut out = HashMap::new();
    let mut bytes = 0;
    for (name, attribute) in map {
        if !valid_attribute_name(name) {
            return Err(SqsError::invalid_parameter_value(format!(
                "Message attribute name '{name}' is invalid: use 1-{ATTRIBUTE_NAME_CHARS_MAX} of A-Z, a-z, 0-9, \
                 '_', '-', '.', no leading, trailing or double periods, and no 'AWS.' or 'Amazon.' prefix."
            )));
        }
        let data_type = required_string(attribute, "DataType").map_err(|_| {
            SqsError::invalid_parameter_value(format!(
                "The message attribute '{name}' must contain a non-empty message attribute type."
            ))
        })?;
        let base_type = data_type.split('.').next().unwrap_or("");
        let stored = match base_type {
            "String" | "Number" => {
                let value = string(attribute, "StringValue")?.filter(|v| !v.is_empty()).ok_or_else(|| {
                    SqsError::invalid_parameter_value(format!(
                        "Message (user) attribute '{name}' must contain a non-empty value of type '{base_type}'."
                    ))
                })?;
                if base_type == "Number" && value.trim().parse::<f64>().is_err() {
                    return Err(SqsError::invalid_parameter_value(format!(
                        "Can't cast the value of message (user) attribute '{name}' to a number."
                    )));
                }
                if !value.chars().all(valid_body_char) {
                    return Err(SqsError::invalid_parameter_value(format!(
                        "The message attribute '{name}' contains characters outside the allowed set."
                    )));
                }
                pb::MessageAttribute {
                    data_type: data_type.to_string(),
                    string_value: value.to_string(),
                    binary_value: Vec::new(),
                }
            }
            "Binary" => {
                let encoded = string(attribute, "BinaryValue")?.filter(|v| !v.is_empty()).ok_or_else(|| {
                    SqsError::invalid_parameter_value(format!(
                        "Message (user) attribute '{name}' must contain a non-empty value of type 'Binary'."
                    ))
                })?;
                let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|_| {
                    SqsError::invalid_parameter_value(format!("The message attribute '{name}' is not valid base64."))
                })?;
                pb::MessageAttribute {
                    data_type: data_type.to_string(),
                    string_value: String::new(),
                    binary_value: decoded,
                }
            }
            _ => {
                return Err(SqsError::invalid_parameter_value(format!(
                    "The type of message (user) attribute '{name}' is invalid. You must use only the following \
                     supported type prefixes: Binary, Number, String."
                )));
            }
        };
        bytes += name.len() + stored.data_type.len() + stored.string_value.len() + stored.binary_value.len();
        out.insert(name.clone(), stored);
    }
    Ok((out, bytes))
}

/// A validated message to send, plus the digests the answer carries.
struct Outgoing {
    message: pb::NewMessage,
    md5_of_body: String,
    md5_of_attributes: Option<String>,
    /// Of the message system attributes the client gave (`AWSTraceHeader` only).
    md5_of_system_attributes: Option<String>,
}

impl Outgoing {
    /// Adds the digests of the message's attributes and system attributes to a send's `answer`.
    fn add_digests(&self, answer: &mut Value) {
        if let Some(md5) = &self.md5_of_attributes {
            answer["MD5OfMessageAttributes"] = json!(md5);
        }
        if let Some(md5) = &self.md5_of_system_attributes {
            answer["MD5OfMessageSystemAttributes"] = json!(md5);
        }
    }
}

/// The system attribute a sent message may carry: its trace header.
const TRACE_HEADER_ATTRIBUTE: &str = "AWSTraceHeader";

/// The trace header a send's `MessageSystemAttributes` give (`AWSTraceHeader`, a String, the
/// only one SQS takes), with the digest of those attributes for the answer.
fn system_attributes(entry: &Value) -> Result<Option<(String, String)>, SqsError> {
    let Some(value) = entry.get("MessageSystemAttributes").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let map =
        value.as_object().ok_or_else(|| SqsError::invalid_parameter_value("MessageSystemAttributes must be a map."))?;
    let mut trace_header = None;
    for (name, attribute) in map {
        if name != TRACE_HEADER_ATTRIBUTE {
            return Err(SqsError::invalid_parameter_value(format!(
                "Message system attribute name '{name}' is invalid: the only one a message may carry is                  {TRACE_HEADER_ATTRIBUTE}."
            )));
        }
        if string(attribute, "DataType")? != Some("String") {
            return Err(SqsError::invalid_parameter_value(format!(
                "The message system attribute '{TRACE_HEADER_ATTRIBUTE}' must be of type 'String'."
            )));
        }
        let header = string(attribute, "StringValue")?.unwrap_or_default();
        if !strata_telemetry::trace::valid_trace_header(header) {
            return Err(SqsError::invalid_parameter_value(format!(
                "The message system attribute '{TRACE_HEADER_ATTRIBUTE}' must be 1-{} printable ASCII characters.",
                strata_telemetry::trace::TRACE_HEADER_CHARS_MAX
            )));
        }
        trace_header = Some(header.to_owned());
    }
    let Some(header) = trace_header else { return Ok(None) };
    let attribute =
        pb::MessageAttribute { data_type: "String".to_owned(), string_value: header.clone(), binary_value: Vec::new() };
    let md5 = md5::of_attributes([(&TRACE_HEADER_ATTRIBUTE.to_owned(), &attribute)]).unwrap_or_default();
    Ok(Some((header, md5)))
}

/// The group and deduplication ids of a message (see [`queue_rules::fifo_ids`]). A FIFO
/// message may name a delay of 0 (as SQS takes it), no other.
fn fifo_ids(
    entry: &Value,
    config: &pb::QueueConfig,
    body: &str,
    delay_s: Option<u64>,
) -> Result<(String, String), SqsError> {
    let group = string(entry, "MessageGroupId")?;
    let deduplication = string(entry, "MessageDeduplicationId")?;
    let has_own_delay = delay_s.is_some_and(|d| d > 0);
    queue_rules::fifo_ids(config, group, deduplication, has_own_delay, body.as_bytes()).map_err(|r| match r {
        Refusal::FifoMessageDelay => invalid_value(
            "DelaySeconds",
            &delay_s.unwrap_or_default().to_string(),
            "The request include parameter that is not valid for this queue type.",
        ),
        other => refused(other, ""),
    })
}

/// The first character SQS refuses in a message body or string attribute, if any.
fn invalid_char(text: &str) -> Option<char> {
    text.chars().find(|&c| !valid_body_char(c))
}

fn outgoing(entry: &Value, config: &pb::QueueConfig) -> Result<Outgoing, SqsError> {
    let body = required_string(entry, "MessageBody")?;
    if body.is_empty() {
        return Err(SqsError::missing("MessageBody"));
    }
    if let Some(c) = invalid_char(body) {
        return Err(SqsError::invalid_message_contents(format!(
            "Invalid binary character '#x{:X}' was found in the message body, the set of allowed characters is #x9 \
             | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF].",
            u32::from(c)
        )));
    }
    let delay_s = integer(entry, "DelaySeconds", 0, DELAY_S_MAX)?;
    let (group_id, deduplication_id) = fifo_ids(entry, config, body, delay_s)?;
    // A FIFO message's delay of 0 is the queue's (which FIFO queues take).
    let delay_s = delay_s.filter(|_| !config.fifo_queue);
    let (attributes, attribute_bytes) = message_attributes(entry)?;
    let size_bytes = body.len() + attribute_bytes;
    let limit = queue_rules::maximum_message_bytes(config) as usize;
    if size_bytes > limit {
        return Err(SqsError::invalid_parameter_value(format!(
            "One or more parameters are invalid. Reason: Message must be shorter than {limit} bytes."
        )));
    }
    let md5_of_attributes = md5::of_attributes(&attributes);
    // The client's trace header, else the call's own when it is traced and sampled.
    let (trace_header, md5_of_system_attributes) = match system_attributes(entry)? {
        Some((header, md5)) => (header, Some(md5)),
        None => (strata_telemetry::trace::current_trace_header().unwrap_or_default(), None),
    };
    Ok(Outgoing {
        md5_of_body: md5::of_body(body.as_bytes()),
        md5_of_attributes,
        md5_of_system_attributes,
        message: pb::NewMessage {
            body: Bytes::copy_from_slice(body.as_bytes()),
            attributes,
            delay_ms: delay_s.map(|d| d * 1000),
            message_group_id: group_id,
            message_deduplication_id: deduplication_id,
            // SQS has delays only; deliver-at times are the native API's.
            deliver_at_ms: None,
            trace_header,
        },
    })
}

async fn send(
    ctx: &Ctx<'_>,
    info: &pb::QueueInfo,
    messages: Vec<pb::NewMessage>,
) -> Result<pb::SendResponse, SqsError> {
    // The customer of a send may come from its messages' attribute (one per call).
    let mut customers = messages.iter().filter_map(|m| m.attributes.get(CUSTOMER_ATTRIBUTE));
    if let Some(first) = customers.next() {
        if customers.any(|other| other.string_value != first.string_value) {
            return Err(SqsError::invalid_parameter_value(format!(
                "The entries of a batch must name the same {CUSTOMER_ATTRIBUTE}."
            )));
        }
        ctx.call.lock().customer_from_attribute(&first.string_value)?;
    }
    // The SDK's invocation id makes the SDK's own retries idempotent too.
    let call = ctx.call.lock().clone();
    let count = messages.len();
    let payload_in_bytes = messages.iter().map(|m| message_payload_bytes(&m.body, &m.attributes)).sum();
    ctx.state.quotas.admit_store(ctx.tenant(), payload_in_bytes).await?;
    // The record travels with the messages: the shard keeps both or neither.
    let charge = Charge { payload_in_bytes, ..ctx.charge.lock().clone() };
    let meter = ctx.state.meter.record(ctx.tenant(), &call, ctx.body, charge);
    let caller = Some(ctx.storage_caller());
    let sent = queues::send(&ctx.state.placement, ctx.tenant(), &info.name, &call, messages, meter, caller).await?;
    ctx.charge.lock().carried = true;
    if sent.messages.len() != count {
        return Err(SqsError::internal_error("The storage node answered a different number of messages."));
    }
    Ok(sent)
}

async fn send_message(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    let mut out = outgoing(input, &info.config.clone().unwrap_or_default())?;
    let fifo = !out.message.message_group_id.is_empty();
    let sent = send(ctx, &info, vec![std::mem::take(&mut out.message)]).await?;
    let mut answer = json!({ "MessageId": sent.messages[0].message_id, "MD5OfMessageBody": out.md5_of_body });
    out.add_digests(&mut answer);
    if fifo {
        answer["SequenceNumber"] = json!(sequence_number(sent.messages[0].seq));
    }
    Ok(answer)
}

/// Checks a batch's entries as a whole and answers them with their ids (`action`: the batch
/// action, as SQS's errors name its entries).
fn batch_entries<'a>(input: &'a Value, action: &str) -> Result<Vec<(&'a str, &'a Value)>, SqsError> {
    let entries = match input.get("Entries") {
        None | Some(Value::Null) => return Err(SqsError::missing("Entries")),
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(SqsError::invalid_parameter_value("Entries must be a list.")),
    };
    if entries.is_empty() {
        return Err(SqsError::empty_batch_request(format!(
            "There should be at least one {action}RequestEntry in the request."
        )));
    }
    if entries.len() > limits::SEND_BATCH_MAX {
        return Err(SqsError::too_many_entries(format!(
            "Maximum number of entries per request are {}. You have sent {}.",
            limits::SEND_BATCH_MAX,
            entries.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = required_string(entry, "Id")?;
        let valid = !id.is_empty()
            && id.len() <= BATCH_ENTRY_ID_CHARS_MAX
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(SqsError::invalid_batch_entry_id(format!(
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at \
                 most {BATCH_ENTRY_ID_CHARS_MAX} letters long."
            )));
        }
        if !seen.insert(id) {
            return Err(SqsError::batch_entry_ids_not_distinct(format!("Id {id} repeated.")));
        }
        out.push((id, entry));
    }
    Ok(out)
}

fn failed(id: &str, e: &SqsError) -> Value {
    json!({ "Id": id, "SenderFault": e.sender_fault, "Code": e.code, "Message": e.message })
}

async fn send_message_batch(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    let entries = batch_entries(input, "SendMessageBatch")?;
    let config = info.config.clone().unwrap_or_default();
    // The batch limit counts every entry's body, valid or not, as SQS does.
    let total_bytes: usize =
        entries.iter().map(|(_, e)| e.get("MessageBody").and_then(Value::as_str).map_or(0, str::len)).sum();
    if total_bytes > MESSAGE_BODY_BYTES_MAX {
        return Err(SqsError::batch_request_too_long(format!(
            "Batch requests cannot be longer than {MESSAGE_BODY_BYTES_MAX} bytes. You have sent {total_bytes} bytes."
        )));
    }
    let mut failures = Vec::new();
    let mut accepted: Vec<(&str, Outgoing)> = Vec::new();
    for (id, entry) in entries {
        match outgoing(entry, &config) {
            Ok(out) => accepted.push((id, out)),
            Err(e) => failures.push(failed(id, &e)),
        }
    }
    let mut successful = Vec::new();
    if !accepted.is_empty() {
        let messages = accepted.iter().map(|(_, out)| out.message.clone()).collect();
        let sent = send(ctx, &info, messages).await?;
        for ((id, out), sent) in accepted.into_iter().zip(sent.messages) {
            let mut entry = json!({ "Id": id, "MessageId": sent.message_id, "MD5OfMessageBody": out.md5_of_body });
            out.add_digests(&mut entry);
            if !out.message.message_group_id.is_empty() {
                entry["SequenceNumber"] = json!(sequence_number(sent.seq));
            }
            successful.push(entry);
        }
    }
    Ok(json!({ "Successful": successful, "Failed": failures }))
}

/// A FIFO message's sequence number as SQS spells it: a string of digits, increasing within a
/// queue (here: the queue's seq, zero-padded to 20 digits).
fn sequence_number(seq: u64) -> String {
    format!("{seq:020}")
}

/// System attributes a receive may ask for (the last three only on FIFO messages; the trace
/// header only on messages that keep one).
const SYSTEM_ATTRIBUTE_NAMES: [&str; 8] = [
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
    TRACE_HEADER_ATTRIBUTE,
    "MessageGroupId",
    "MessageDeduplicationId",
    "SequenceNumber",
];

/// Which message attributes a receive returns: all, or by exact name or `prefix.*`.
fn attribute_filter(names: &[&str]) -> impl Fn(&str) -> bool {
    let all = names.iter().any(|n| *n == "All" || *n == ".*");
    let exact: HashSet<String> = names.iter().filter(|n| !n.ends_with(".*")).map(|n| n.to_string()).collect();
    let prefixes: Vec<String> =
        names.iter().filter_map(|n| n.strip_suffix(".*")).filter(|p| !p.is_empty()).map(|p| format!("{p}.")).collect();
    move |name: &str| all || exact.contains(name) || prefixes.iter().any(|p| name.starts_with(p.as_str()))
}

fn attribute_json(a: &pb::MessageAttribute) -> Value {
    if a.data_type.starts_with("Binary") {
        json!({ "DataType": a.data_type, "BinaryValue": base64::engine::general_purpose::STANDARD.encode(&a.binary_value) })
    } else {
        json!({ "DataType": a.data_type, "StringValue": a.string_value })
    }
}

async fn receive_message(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    let config = info.config.clone().unwrap_or_default();
    let max_messages = integer(input, "MaxNumberOfMessages", 1, u64::from(limits::RECEIVE_BATCH_MAX))?.unwrap_or(1);
    let visibility_timeout_ms = integer(input, "VisibilityTimeout", 0, VISIBILITY_TIMEOUT_S_MAX)?.map(|v| v * 1000);
    let wait_ms = integer(input, "WaitTimeSeconds", 0, WAIT_S_MAX)?.map_or(config.receive_wait_ms, |w| w * 1000);
    let mut system_names = string_list(input, "AttributeNames")?;
    system_names.extend(string_list(input, "MessageSystemAttributeNames")?);
    let all_system = system_names.contains(&"All");
    let wanted_system: Vec<&str> =
        SYSTEM_ATTRIBUTE_NAMES.iter().copied().filter(|n| all_system || system_names.contains(n)).collect();
    let message_names = string_list(input, "MessageAttributeNames")?;
    let wants_attribute = attribute_filter(&message_names);

    // Used by FIFO queues only, as in SQS; a standard queue ignores it.
    let attempt_id = match string(input, "ReceiveRequestAttemptId")? {
        Some(id) if config.fifo_queue => {
            if !queue_rules::valid_fifo_id(id) {
                return Err(SqsError::invalid_parameter_value(
                    "Value for parameter ReceiveRequestAttemptId is invalid: 1-128 characters of letters, digits and \
                     punctuation.",
                ));
            }
            id.to_string()
        }
        _ => String::new(),
    };
    let received = queues::on_queue_polling(&ctx.state.placement, ctx.tenant(), &info.name, wait_ms, |mut c, q| {
        let (receive_request_attempt_id, caller) = (attempt_id.clone(), Some(ctx.storage_caller()));
        async move {
            c.receive(pb::ReceiveRequest {
                queue: Some(q),
                max_messages: max_messages as u32,
                visibility_timeout_ms,
                wait_ms,
                receive_request_attempt_id,
                caller,
            })
            .await
        }
    })
    .await?;
    queues::link_to_sends(&received);
    {
        let mut charge = ctx.charge.lock();
        charge.payload_out_bytes =
            received.messages.iter().map(|m| message_payload_bytes(&m.body, &m.attributes)).sum();
        charge.empty_receive = received.messages.is_empty();
    }
    let messages: Vec<Value> = received
        .messages
        .into_iter()
        .map(|m| {
            let mut out = json!({
                "MessageId": m.message_id,
                "ReceiptHandle": m.receipt_handle,
                "MD5OfBody": md5::of_body(&m.body),
                "Body": String::from_utf8_lossy(&m.body),
            });
            if !wanted_system.is_empty() {
                let mut system = Map::new();
                for name in &wanted_system {
                    let value = match *name {
                        "SenderId" => ctx.tenant().to_string(),
                        "SentTimestamp" => m.sent_ms.to_string(),
                        "ApproximateReceiveCount" => m.receive_count.to_string(),
                        "ApproximateFirstReceiveTimestamp" => m.first_receive_ms.to_string(),
                        "MessageGroupId" if !m.message_group_id.is_empty() => m.message_group_id.clone(),
                        "MessageDeduplicationId" if !m.message_group_id.is_empty() => {
                            m.message_deduplication_id.clone()
                        }
                        "SequenceNumber" if !m.message_group_id.is_empty() => sequence_number(m.sequence_number),
                        TRACE_HEADER_ATTRIBUTE if !m.trace_header.is_empty() => m.trace_header.clone(),
                        _ => continue,
                    };
                    system.insert(name.to_string(), Value::String(value));
                }
                out["Attributes"] = Value::Object(system);
            }
            let returned: BTreeMap<&String, &pb::MessageAttribute> =
                m.attributes.iter().filter(|(name, _)| wants_attribute(name)).collect();
            if let Some(md5) = md5::of_attributes(returned.iter().map(|(k, v)| (*k, *v))) {
                out["MD5OfMessageAttributes"] = json!(md5);
                let attributes: Map<String, Value> =
                    returned.iter().map(|(k, v)| (k.to_string(), attribute_json(v))).collect();
                out["MessageAttributes"] = Value::Object(attributes);
            }
            out
        })
        .collect();
    Ok(json!({ "Messages": messages }))
}

/// The SQS error for a storage entry's error code about `receipt`, through the shared mapping
/// (a receipt that is not one in SQS's words).
fn entry_error(code: &str, message: &str, receipt: &str) -> SqsError {
    let kind = ErrorKind::from_code(code).unwrap_or(ErrorKind::InvalidParameter);
    receipt_error(StrataError::new(kind, message), receipt)
}

/// A storage error about `receipt` in SQS's words.
fn receipt_error(e: StrataError, receipt: &str) -> SqsError {
    match e.kind {
        ErrorKind::InvalidReceipt => SqsError::receipt_handle_is_invalid(format!(
            "The input receipt handle \"{receipt}\" is not a valid receipt handle."
        )),
        _ => e.into(),
    }
}

/// Deletes by receipt. A batch carries its billing record to the shard, which keeps it in the
/// delete's own log entry (a batch is accepted whatever its entries' outcomes); a single delete
/// is charged once answered, since a refused receipt fails the call.
async fn delete_receipts(
    ctx: &Ctx<'_>,
    info: &pb::QueueInfo,
    receipts: Vec<String>,
    batch: bool,
) -> Result<pb::DeleteResponse, SqsError> {
    let meter = if batch {
        let call = ctx.call.lock().clone();
        let charge = ctx.charge.lock().clone();
        ctx.state.meter.record(ctx.tenant(), &call, ctx.body, charge).map(pb::MeterRecord::from)
    } else {
        None
    };
    let response = queues::on_queue(&ctx.state.placement, ctx.tenant(), &info.name, |mut c, q| {
        let (receipt_handles, meter, caller) = (receipts.clone(), meter.clone(), Some(ctx.storage_caller()));
        async move { c.delete(pb::DeleteRequest { queue: Some(q), receipt_handles, meter, caller }).await }
    })
    .await?;
    ctx.charge.lock().carried = batch;
    if response.results.len() != receipts.len() {
        return Err(SqsError::internal_error("The storage node answered a different number of results."));
    }
    Ok(response)
}

async fn delete_message(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    let receipt = required_string(input, "ReceiptHandle")?;
    let response = delete_receipts(ctx, &info, vec![receipt.to_string()], false).await?;
    let result = &response.results[0];
    // As SQS: deleting with a receipt that is no longer the latest succeeds and deletes nothing.
    if !result.error_code.is_empty() && result.error_code != ErrorKind::StaleReceipt.code() {
        return Err(entry_error(&result.error_code, &result.error_message, receipt));
    }
    Ok(json!({}))
}

async fn delete_message_batch(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    let entries = batch_entries(input, "DeleteMessageBatch")?;
    let mut failures = Vec::new();
    let mut ids = Vec::new();
    let mut receipts = Vec::new();
    for (id, entry) in entries {
        match required_string(entry, "ReceiptHandle") {
            Ok(receipt) => {
                ids.push(id);
                receipts.push(receipt.to_string());
            }
            Err(e) => failures.push(failed(id, &e)),
        }
    }
    let mut successful = Vec::new();
    if !receipts.is_empty() {
        let response = delete_receipts(ctx, &info, receipts.clone(), true).await?;
        for ((id, receipt), result) in ids.into_iter().zip(&receipts).zip(response.results) {
            if result.error_code.is_empty() || result.error_code == ErrorKind::StaleReceipt.code() {
                successful.push(json!({ "Id": id }));
            } else {
                failures.push(failed(id, &entry_error(&result.error_code, &result.error_message, receipt)));
            }
        }
    }
    Ok(json!({ "Successful": successful, "Failed": failures }))
}

async fn change_visibility(
    ctx: &Ctx<'_>,
    info: &pb::QueueInfo,
    receipt_handle: &str,
    visibility_timeout_ms: u64,
) -> Result<(), SqsError> {
    let receipt = receipt_handle.to_string();
    let changed = queues::on_queue(&ctx.state.placement, ctx.tenant(), &info.name, |mut c, q| {
        let (receipt_handle, caller) = (receipt.clone(), Some(ctx.storage_caller()));
        async move {
            let request = pb::ChangeVisibilityRequest { queue: Some(q), receipt_handle, visibility_timeout_ms, caller };
            c.change_visibility(request).await
        }
    })
    .await;
    match changed {
        Ok(_) => Ok(()),
        // As SQS: a message deleted, not in flight, or received again since.
        Err(e) if matches!(e.kind, ErrorKind::MessageNotInFlight | ErrorKind::StaleReceipt) => Err(invalid_value(
            "ReceiptHandle",
            receipt_handle,
            "Message does not exist or is not available for visibility timeout change.",
        )),
        Err(e) => Err(receipt_error(e, receipt_handle)),
    }
}

async fn change_message_visibility(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    let receipt = required_string(input, "ReceiptHandle")?;
    let timeout_s = visibility_change_s(input)?;
    change_visibility(ctx, &info, receipt, timeout_s * 1000).await?;
    Ok(json!({}))
}

async fn change_message_visibility_batch(ctx: &Ctx<'_>, input: &Value) -> Result<Value, SqsError> {
    let info = queue_of(ctx, input).await?;
    let entries = batch_entries(input, "ChangeMessageVisibilityBatch")?;
    let mut successful = Vec::new();
    let mut failures = Vec::new();
    for (id, entry) in entries {
        let result = async {
            let receipt = required_string(entry, "ReceiptHandle")?;
            let timeout_s = visibility_change_s(entry)?;
            change_visibility(ctx, &info, receipt, timeout_s * 1000).await
        }
        .await;
        match result {
            Ok(()) => successful.push(json!({ "Id": id })),
            Err(e) => failures.push(failed(id, &e)),
        }
    }
    Ok(json!({ "Successful": successful, "Failed": failures }))
}
