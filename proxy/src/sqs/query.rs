//! The SQS query protocol: the wire of older SDKs (AWS SDK for Java 1.x, boto 2, botocore before
//! SQS moved to JSON) and of any client that posts a form.
//!
//! A request is a `POST` with an `application/x-www-form-urlencoded` body, or a `GET` with the
//! same parameters in the query string (`Action=SendMessage&Version=2012-11-05&QueueUrl=...`). It
//! arrives at `/` or at a queue URL (`/{account}/{queue}`): SDKs of this protocol send queue
//! operations to the queue URL, some (Java 1.x) without a `QueueUrl` parameter, which is then taken
//! from the path. The answer is XML: `<{Action}Response>` holding `<{Action}Result>` (left out for
//! actions without output) and `<ResponseMetadata>`, or an `<ErrorResponse>` with the query error
//! code and the error's HTTP status.
//!
//! This module only translates: parameters into the JSON protocol's input, and the JSON output
//! into XML, both driven by one table of the SQS shapes (`OPERATIONS`); [`super::actions`] runs
//! them. The names are those of the query protocol, which differ from the JSON ones because every
//! list and map of SQS is *flattened*: the list `AttributeNames` travels as `AttributeName.1`,
//! `AttributeName.2`, ... and answers as repeated `<AttributeName>` elements; the map
//! `Attributes` as `Attribute.N.Name` / `Attribute.N.Value` and as repeated
//! `<Attribute><Name/><Value/></Attribute>`; batch entries as `SendMessageBatchRequestEntry.N.*`.
//! The table was written from the last query-protocol SQS model botocore shipped
//! (`botocore/data/sqs/2012-11-05/service-2.json`, botocore 1.31): later models describe SQS for
//! the JSON protocol only and no longer carry these `locationName` traits. Members added since
//! (`MessageSystemAttributeNames`) follow the same rule (`MessageSystemAttributeName.N`).
//!
//! Input is bounded and checked before any action runs: at most [`PARAMS_MAX`] parameters, names
//! of at most [`NAME_BYTES_MAX`] bytes and [`NAME_SEGMENTS_MAX`] dotted segments, list and map
//! indexes `1..=`[`INDEX_MAX`], strict percent-decoding into UTF-8. Malformed encoding answers
//! `MalformedQueryString`; a parameter the action does not have, or a value of the wrong kind,
//! `InvalidParameterValue` naming the parameter. No input makes this module panic.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};
use serde_json::{Map, Value};

use super::SqsState;
use super::auth::Signed;
use super::error::SqsError;

/// Most parameters in one request. A SendMessageBatch of 10 entries with 10 message attributes
/// each has about 400.
pub const PARAMS_MAX: usize = 1000;
/// Largest list or map index (`Attribute.100.Name`): SQS caps batches at 10 entries and messages
/// at 10 attributes; queue attributes and tags are a few dozen at most.
pub const INDEX_MAX: u32 = 100;
/// Longest parameter name. The longest SQS name is about 80 bytes
/// (`SendMessageBatchRequestEntry.10.MessageAttribute.10.Value.StringListValue.100`).
pub const NAME_BYTES_MAX: usize = 256;
/// Most dotted segments in a parameter name; the deepest SQS name has 7.
pub const NAME_SEGMENTS_MAX: usize = 8;

/// The only API version of SQS.
const API_VERSION: &str = "2012-11-05";
const XML_NAMESPACE: &str = "http://queue.amazonaws.com/doc/2012-11-05/";
const XML_CONTENT_TYPE: &str = "text/xml";
const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

// ------------------------------------------------------------------------------ the SQS shapes

/// A shape of the SQS model, as far as the query protocol needs it.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// A string; blobs too (base64 text in both protocols).
    String,
    /// An integer or a long: a JSON number.
    Integer,
    Boolean,
    /// A flattened list: items are `{name}.{n}` (`n` from 1), repeated `<{name}>` elements in XML.
    List(&'static Shape),
    /// A flattened map: entry `n` is `{name}.{n}.{key}` and `{name}.{n}.{value}`, in XML a repeated
    /// `<{name}><{key}/><{value}/></{name}>`.
    Map {
        key: &'static str,
        value: &'static str,
        shape: &'static Shape,
    },
    Structure(&'static [Member]),
}

/// A member of a structure: its JSON-protocol name and its query-protocol name (the member's
/// `locationName`, or for a flattened list the list member's).
#[derive(Debug)]
struct Member {
    json: &'static str,
    wire: &'static str,
    shape: Shape,
}

const fn member(json: &'static str, wire: &'static str, shape: Shape) -> Member {
    Member { json, wire, shape }
}

/// A member named the same in both protocols.
const fn same(name: &'static str, shape: Shape) -> Member {
    Member { json: name, wire: name, shape }
}

const fn string(name: &'static str) -> Member {
    same(name, Shape::String)
}

const fn integer(name: &'static str) -> Member {
    same(name, Shape::Integer)
}

const fn string_list(json: &'static str, wire: &'static str) -> Member {
    member(json, wire, Shape::List(&Shape::String))
}

const STRING_MAP: Shape = Shape::Map { key: "Name", value: "Value", shape: &Shape::String };
const TAG_MAP: Shape = Shape::Map { key: "Key", value: "Value", shape: &Shape::String };
const MESSAGE_ATTRIBUTE_VALUE: Shape = Shape::Structure(&[
    string("StringValue"),
    string("BinaryValue"),
    string_list("StringListValues", "StringListValue"),
    string_list("BinaryListValues", "BinaryListValue"),
    string("DataType"),
]);
const MESSAGE_ATTRIBUTE_MAP: Shape = Shape::Map { key: "Name", value: "Value", shape: &MESSAGE_ATTRIBUTE_VALUE };
const MESSAGE_ATTRIBUTES: Member = member("MessageAttributes", "MessageAttribute", MESSAGE_ATTRIBUTE_MAP);
const MESSAGE_SYSTEM_ATTRIBUTES: Member =
    member("MessageSystemAttributes", "MessageSystemAttribute", MESSAGE_ATTRIBUTE_MAP);
const QUEUE_ATTRIBUTES: Member = member("Attributes", "Attribute", STRING_MAP);
const ATTRIBUTE_NAMES: Member = string_list("AttributeNames", "AttributeName");
const BATCH_ID_ENTRY: Shape = Shape::Structure(&[string("Id")]);
const BATCH_FAILED: Member = member(
    "Failed",
    "BatchResultErrorEntry",
    Shape::List(&Shape::Structure(&[
        string("Id"),
        same("SenderFault", Shape::Boolean),
        string("Code"),
        string("Message"),
    ])),
);

/// An action: its input members, and its output members (`None`: the action answers nothing,
/// and the XML has no `<{Action}Result>`).
struct Operation {
    name: &'static str,
    input: &'static [Member],
    output: Option<&'static [Member]>,
}

static OPERATIONS: &[Operation] = &[
    Operation {
        name: "AddPermission",
        input: &[
            string("QueueUrl"),
            string("Label"),
            string_list("AWSAccountIds", "AWSAccountId"),
            string_list("Actions", "ActionName"),
        ],
        output: None,
    },
    Operation {
        name: "CancelMessageMoveTask",
        input: &[string("TaskHandle")],
        output: Some(&[integer("ApproximateNumberOfMessagesMoved")]),
    },
    Operation {
        name: "ChangeMessageVisibility",
        input: &[string("QueueUrl"), string("ReceiptHandle"), integer("VisibilityTimeout")],
        output: None,
    },
    Operation {
        name: "ChangeMessageVisibilityBatch",
        input: &[
            string("QueueUrl"),
            member(
                "Entries",
                "ChangeMessageVisibilityBatchRequestEntry",
                Shape::List(&Shape::Structure(&[string("Id"), string("ReceiptHandle"), integer("VisibilityTimeout")])),
            ),
        ],
        output: Some(&[
            member("Successful", "ChangeMessageVisibilityBatchResultEntry", Shape::List(&BATCH_ID_ENTRY)),
            BATCH_FAILED,
        ]),
    },
    Operation {
        name: "CreateQueue",
        input: &[string("QueueName"), QUEUE_ATTRIBUTES, member("tags", "Tag", TAG_MAP)],
        output: Some(&[string("QueueUrl")]),
    },
    Operation { name: "DeleteMessage", input: &[string("QueueUrl"), string("ReceiptHandle")], output: None },
    Operation {
        name: "DeleteMessageBatch",
        input: &[
            string("QueueUrl"),
            member(
                "Entries",
                "DeleteMessageBatchRequestEntry",
                Shape::List(&Shape::Structure(&[string("Id"), string("ReceiptHandle")])),
            ),
        ],
        output: Some(&[
            member("Successful", "DeleteMessageBatchResultEntry", Shape::List(&BATCH_ID_ENTRY)),
            BATCH_FAILED,
        ]),
    },
    Operation { name: "DeleteQueue", input: &[string("QueueUrl")], output: None },
    Operation {
        name: "GetQueueAttributes",
        input: &[string("QueueUrl"), ATTRIBUTE_NAMES],
        output: Some(&[QUEUE_ATTRIBUTES]),
    },
    Operation {
        name: "GetQueueUrl",
        input: &[string("QueueName"), string("QueueOwnerAWSAccountId")],
        output: Some(&[string("QueueUrl")]),
    },
    Operation {
        name: "ListDeadLetterSourceQueues",
        input: &[string("QueueUrl"), string("NextToken"), integer("MaxResults")],
        output: Some(&[string_list("queueUrls", "QueueUrl"), string("NextToken")]),
    },
    Operation {
        name: "ListMessageMoveTasks",
        input: &[string("SourceArn"), integer("MaxResults")],
        output: Some(&[member(
            "Results",
            "ListMessageMoveTasksResultEntry",
            Shape::List(&Shape::Structure(&[
                string("TaskHandle"),
                string("Status"),
                string("SourceArn"),
                string("DestinationArn"),
                integer("MaxNumberOfMessagesPerSecond"),
                integer("ApproximateNumberOfMessagesMoved"),
                integer("ApproximateNumberOfMessagesToMove"),
                string("FailureReason"),
                integer("StartedTimestamp"),
            ])),
        )]),
    },
    Operation { name: "ListQueueTags", input: &[string("QueueUrl")], output: Some(&[member("Tags", "Tag", TAG_MAP)]) },
    Operation {
        name: "ListQueues",
        input: &[string("QueueNamePrefix"), string("NextToken"), integer("MaxResults")],
        output: Some(&[string_list("QueueUrls", "QueueUrl"), string("NextToken")]),
    },
    Operation { name: "PurgeQueue", input: &[string("QueueUrl")], output: None },
    Operation {
        name: "ReceiveMessage",
        input: &[
            string("QueueUrl"),
            ATTRIBUTE_NAMES,
            string_list("MessageSystemAttributeNames", "MessageSystemAttributeName"),
            string_list("MessageAttributeNames", "MessageAttributeName"),
            integer("MaxNumberOfMessages"),
            integer("VisibilityTimeout"),
            integer("WaitTimeSeconds"),
            string("ReceiveRequestAttemptId"),
        ],
        output: Some(&[member(
            "Messages",
            "Message",
            Shape::List(&Shape::Structure(&[
                string("MessageId"),
                string("ReceiptHandle"),
                string("MD5OfBody"),
                string("Body"),
                QUEUE_ATTRIBUTES,
                string("MD5OfMessageAttributes"),
                MESSAGE_ATTRIBUTES,
            ])),
        )]),
    },
    Operation { name: "RemovePermission", input: &[string("QueueUrl"), string("Label")], output: None },
    Operation {
        name: "SendMessage",
        input: &[
            string("QueueUrl"),
            string("MessageBody"),
            integer("DelaySeconds"),
            MESSAGE_ATTRIBUTES,
            MESSAGE_SYSTEM_ATTRIBUTES,
            string("MessageDeduplicationId"),
            string("MessageGroupId"),
        ],
        output: Some(&[
            string("MD5OfMessageBody"),
            string("MD5OfMessageAttributes"),
            string("MD5OfMessageSystemAttributes"),
            string("MessageId"),
            string("SequenceNumber"),
        ]),
    },
    Operation {
        name: "SendMessageBatch",
        input: &[
            string("QueueUrl"),
            member(
                "Entries",
                "SendMessageBatchRequestEntry",
                Shape::List(&Shape::Structure(&[
                    string("Id"),
                    string("MessageBody"),
                    integer("DelaySeconds"),
                    MESSAGE_ATTRIBUTES,
                    MESSAGE_SYSTEM_ATTRIBUTES,
                    string("MessageDeduplicationId"),
                    string("MessageGroupId"),
                ])),
            ),
        ],
        output: Some(&[
            member(
                "Successful",
                "SendMessageBatchResultEntry",
                Shape::List(&Shape::Structure(&[
                    string("Id"),
                    string("MessageId"),
                    string("MD5OfMessageBody"),
                    string("MD5OfMessageAttributes"),
                    string("MD5OfMessageSystemAttributes"),
                    string("SequenceNumber"),
                ])),
            ),
            BATCH_FAILED,
        ]),
    },
    Operation { name: "SetQueueAttributes", input: &[string("QueueUrl"), QUEUE_ATTRIBUTES], output: None },
    Operation {
        name: "StartMessageMoveTask",
        input: &[string("SourceArn"), string("DestinationArn"), integer("MaxNumberOfMessagesPerSecond")],
        output: Some(&[string("TaskHandle")]),
    },
    Operation { name: "TagQueue", input: &[string("QueueUrl"), member("Tags", "Tag", TAG_MAP)], output: None },
    Operation { name: "UntagQueue", input: &[string("QueueUrl"), string_list("TagKeys", "TagKey")], output: None },
];

fn operation(name: &str) -> Option<&'static Operation> {
    OPERATIONS.iter().find(|op| op.name == name)
}

/// The SQS action called `name`, as a `'static` name (for metric labels), if there is one.
pub(crate) fn action_name(name: &str) -> Option<&'static str> {
    operation(name).map(|op| op.name)
}

// ------------------------------------------------------------------------------ the handler

/// Whether a request to an SQS route speaks the query protocol: anything that is not the JSON
/// protocol (an `X-Amz-Target` header or an `application/x-amz-json` body).
pub fn is_query_request(headers: &HeaderMap) -> bool {
    let json_content = content_type(headers).is_some_and(|ct| ct.starts_with("application/x-amz-json"));
    !headers.contains_key("x-amz-target") && !json_content
}

/// The media type of the request, lower-cased, without parameters (`; charset=utf-8`).
fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Serves one query-protocol request; `request_id` goes into the XML and is the caller's
/// `x-amzn-requestid`.
pub(crate) async fn handle(
    state: &SqsState,
    signed: Signed,
    request: &super::Signing<'_>,
    body: &[u8],
    request_id: &str,
) -> Response {
    match serve(state, signed, request, body, request_id).await {
        Ok((operation, output)) => xml_answer(StatusCode::OK, response_xml(operation, &output, request_id), None),
        Err(e) => error_answer(&e, request_id),
    }
}

/// The XML answer of a failed query-protocol request.
pub(super) fn error_answer(e: &SqsError, request_id: &str) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    xml_answer(status, error_xml(e, request_id), e.retry_after_s)
}

/// An XML document as the answer, with its status and `Retry-After`.
fn xml_answer(status: StatusCode, xml: io::Result<Vec<u8>>, retry_after_s: Option<u64>) -> Response {
    // Writing into memory cannot fail; should it, the caller gets a bare 500 rather than half a
    // document.
    let mut response = match xml {
        Ok(xml) => (status, xml).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot write an XML answer");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    };
    if let Some(seconds) = retry_after_s {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(XML_CONTENT_TYPE));
    response
}

async fn serve(
    state: &SqsState,
    signed: Signed,
    request: &super::Signing<'_>,
    body: &[u8],
    request_id: &str,
) -> Result<(&'static Operation, Value), SqsError> {
    // Authentication first, over the query and body exactly as received.
    let ctx = super::authenticate(state, signed, request, body, request_id)?;
    let super::Signing { method, uri, headers } = *request;
    let mut params = Vec::new();
    parse_form(uri.query().unwrap_or("").as_bytes(), &mut params)?;
    if *method == Method::POST && !body.is_empty() {
        match content_type(headers).as_deref() {
            None | Some(FORM_CONTENT_TYPE) => parse_form(body, &mut params)?,
            Some(other) => {
                return Err(SqsError::malformed_request(format!(
                    "Unsupported Content-Type '{other}': send the parameters as {FORM_CONTENT_TYPE}."
                )));
            }
        }
    }
    let (operation, mut input) = to_input(params)?;
    if let Some(path) = queue_path(uri.path())
        && operation.input.iter().any(|m| m.json == "QueueUrl")
        && !input.contains_key("QueueUrl")
    {
        input.insert("QueueUrl".into(), Value::String(format!("{}{path}", ctx.base_url)));
    }
    let output = super::run(&ctx, operation.name, Value::Object(input)).await?;
    Ok((operation, output))
}

/// The path when it names a queue (`/{account}/{queue}`).
fn queue_path(path: &str) -> Option<&str> {
    let mut segments = path.strip_prefix('/')?.split('/');
    match (segments.next(), segments.next(), segments.next()) {
        (Some(account), Some(queue), None) if !account.is_empty() && !queue.is_empty() => Some(path),
        _ => None,
    }
}

// ------------------------------------------------------------------------------ form → JSON

fn malformed(message: impl Into<String>) -> SqsError {
    SqsError::malformed_request(message)
}

fn invalid(message: impl Into<String>) -> SqsError {
    SqsError::invalid_parameter_value(message)
}

/// Appends the pairs of an `application/x-www-form-urlencoded` string (`+` is a space), decoded
/// strictly: a bad `%` escape or bytes that are not UTF-8 are an error, not a replacement (as
/// `form_urlencoded` alone would make them).
fn parse_form(raw: &[u8], params: &mut Vec<(String, String)>) -> Result<(), SqsError> {
    let mut rest = raw;
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        let hex = rest.get(at + 1..at + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !hex {
            return Err(malformed("The request has a '%' not followed by two hexadecimal digits."));
        }
        rest = &rest[at + 3..];
    }
    // Names and values are split at ASCII bytes, which never cut a UTF-8 sequence: the whole
    // input decodes to UTF-8 exactly when every name and value does.
    if percent_encoding::percent_decode(raw).decode_utf8().is_err() {
        return Err(malformed("The request's parameters are not valid UTF-8 once decoded."));
    }
    for (name, value) in form_urlencoded::parse(raw) {
        if params.len() >= PARAMS_MAX {
            return Err(malformed(format!("A request may have at most {PARAMS_MAX} parameters.")));
        }
        if name.len() > NAME_BYTES_MAX {
            return Err(malformed(format!("A parameter name is longer than {NAME_BYTES_MAX} bytes.")));
        }
        params.push((name.into_owned(), value.into_owned()));
    }
    Ok(())
}

/// The parameters as a tree of their dotted names: `Attribute.1.Name=x` is
/// `root → "Attribute" → "1" → "Name" = x`.
#[derive(Debug, Default)]
struct Node {
    value: Option<String>,
    children: BTreeMap<String, Node>,
}

/// The operation and its JSON input.
fn to_input(params: Vec<(String, String)>) -> Result<(&'static Operation, Map<String, Value>), SqsError> {
    let mut action = None;
    let mut version = None;
    let mut root = Node::default();
    for (name, value) in params {
        let slot = match name.as_str() {
            "Action" => &mut action,
            "Version" => &mut version,
            // Presigned URLs carry their signature in the query string (checked by SigV4).
            n if n.get(..6).is_some_and(|p| p.eq_ignore_ascii_case("x-amz-")) => continue,
            _ => {
                insert(&mut root, &name, value)?;
                continue;
            }
        };
        if slot.replace(value).is_some() {
            return Err(malformed(format!("The parameter {name} appears more than once.")));
        }
    }
    let action =
        action.ok_or_else(|| SqsError::auth("MissingAction", 400, "The request must contain the parameter Action."))?;
    if version.as_deref().is_some_and(|v| v != API_VERSION) {
        return Err(SqsError::auth(
            "NoSuchVersion",
            400,
            format!("Version must be {API_VERSION}, the only version of this API."),
        ));
    }
    let operation = operation(&action)
        .ok_or_else(|| SqsError::invalid_action(format!("The action {action} is not valid for this endpoint.")))?;
    let input = structure(&root, operation.input, "")?;
    Ok((operation, input))
}

fn insert(root: &mut Node, name: &str, value: String) -> Result<(), SqsError> {
    let mut node = root;
    for (i, segment) in name.split('.').enumerate() {
        if i >= NAME_SEGMENTS_MAX {
            return Err(malformed(format!("The parameter name {name} has more than {NAME_SEGMENTS_MAX} parts.")));
        }
        if segment.is_empty() {
            return Err(malformed(format!("The parameter name '{name}' has an empty part.")));
        }
        node = node.children.entry(segment.to_string()).or_default();
    }
    if node.value.replace(value).is_some() {
        return Err(malformed(format!("The parameter {name} appears more than once.")));
    }
    Ok(())
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// The members of a structure; `path` is the node's name, for messages.
fn structure(node: &Node, members: &[Member], path: &str) -> Result<Map<String, Value>, SqsError> {
    if node.value.is_some() {
        return Err(invalid(format!("{path} is a structure: send its members as {path}.<Member>.")));
    }
    let mut out = Map::new();
    for (name, child) in &node.children {
        let child_path = join(path, name);
        if let Some(member) = members.iter().find(|m| m.wire == name) {
            out.insert(member.json.to_string(), convert(child, &member.shape, &child_path)?);
            continue;
        }
        // The JSON-protocol name of a flattened list: botocore's query serializer sends an empty
        // list as `AttributeNames=` (it renames only the items); any other use is a mistake that
        // deserves the right name.
        match members.iter().find(|m| m.json == name) {
            Some(member @ Member { shape: Shape::List(_), .. })
                if child.children.is_empty() && child.value.as_deref() == Some("") =>
            {
                out.entry(member.json).or_insert_with(|| Value::Array(Vec::new()));
            }
            Some(member) => {
                return Err(invalid(format!(
                    "Unknown parameter {child_path}: the query protocol names it {}.",
                    join(path, &wire_form(member))
                )));
            }
            None => {
                let known: Vec<String> = members.iter().map(wire_form).collect();
                return Err(invalid(format!("Unknown parameter {child_path}. Parameters here: {}.", known.join(", "))));
            }
        }
    }
    Ok(out)
}

/// How a member is spelled in a form, for messages: `QueueUrl`, `AttributeName.N`,
/// `Attribute.N.Name`.
fn wire_form(member: &Member) -> String {
    match member.shape {
        Shape::List(_) => format!("{}.N", member.wire),
        Shape::Map { key, .. } => format!("{}.N.{key}", member.wire),
        Shape::Structure(_) => format!("{}.<Member>", member.wire),
        Shape::String | Shape::Integer | Shape::Boolean => member.wire.to_string(),
    }
}

fn convert(node: &Node, shape: &Shape, path: &str) -> Result<Value, SqsError> {
    match shape {
        Shape::String | Shape::Integer | Shape::Boolean => {
            if let Some(first) = node.children.keys().next() {
                return Err(invalid(format!("Unknown parameter {}: {path} is a single value.", join(path, first))));
            }
            // A node without children was made for a parameter, so it has a value.
            scalar(node.value.as_deref().unwrap_or(""), shape, path)
        }
        Shape::List(item) => {
            let items = indexed(node, path)?;
            let values: Result<Vec<Value>, SqsError> =
                items.into_iter().map(|(n, child)| convert(child, item, &join(path, n))).collect();
            Ok(Value::Array(values?))
        }
        Shape::Map { key, value, shape } => {
            let mut out = Map::new();
            for (n, entry) in indexed(node, path)? {
                let entry_path = join(path, n);
                if entry.value.is_some() {
                    return Err(invalid(format!("{entry_path} is a map entry: send {entry_path}.{key} and .{value}.")));
                }
                if let Some(other) = entry.children.keys().find(|k| *k != key && *k != value) {
                    return Err(invalid(format!(
                        "Unknown parameter {entry_path}.{other}: a map entry has {key} and {value}."
                    )));
                }
                let entry_key = match entry.children.get(*key) {
                    Some(node) => match convert(node, &Shape::String, &format!("{entry_path}.{key}"))? {
                        Value::String(s) => s,
                        other => other.to_string(),
                    },
                    None => return Err(SqsError::missing(&format!("{entry_path}.{key}"))),
                };
                let entry_value = match entry.children.get(*value) {
                    Some(node) => convert(node, shape, &format!("{entry_path}.{value}"))?,
                    None => return Err(SqsError::missing(&format!("{entry_path}.{value}"))),
                };
                if out.insert(entry_key.clone(), entry_value).is_some() {
                    return Err(invalid(format!("{path} has the {key} '{entry_key}' more than once.")));
                }
            }
            Ok(Value::Object(out))
        }
        Shape::Structure(members) => Ok(Value::Object(structure(node, members, path)?)),
    }
}

fn scalar(value: &str, shape: &Shape, path: &str) -> Result<Value, SqsError> {
    match shape {
        Shape::Integer => value.trim().parse::<i64>().map(Value::from).map_err(|_| {
            invalid(format!("Value {value} for parameter {path} is invalid. Reason: must be an integer."))
        }),
        Shape::Boolean => match value {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(invalid(format!("Value {value} for parameter {path} is invalid. Reason: must be true or false."))),
        },
        _ => Ok(Value::String(value.to_string())),
    }
}

/// The entries of a flattened list or map, in index order.
fn indexed<'a>(node: &'a Node, path: &str) -> Result<Vec<(&'a str, &'a Node)>, SqsError> {
    if node.value.is_some() {
        // `AttributeName=` with nothing else is an empty list, as botocore sends one.
        if node.children.is_empty() && node.value.as_deref() == Some("") {
            return Ok(Vec::new());
        }
        return Err(invalid(format!("{path} is a list: send its items as {path}.1, {path}.2, ...")));
    }
    let mut entries = Vec::with_capacity(node.children.len());
    for (n, child) in &node.children {
        // Canonical decimal only, so that `1` and `01` cannot name the same item twice.
        let index = Some(n.as_str())
            .filter(|n| n.len() <= 3 && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|i| (1..=INDEX_MAX).contains(i))
            .ok_or_else(|| {
                invalid(format!(
                    "Invalid parameter {}: items of {path} are numbered {path}.1 to {path}.{INDEX_MAX}.",
                    join(path, n)
                ))
            })?;
        entries.push((index, n.as_str(), child));
    }
    entries.sort_by_key(|(index, _, _)| *index);
    Ok(entries.into_iter().map(|(_, n, child)| (n, child)).collect())
}

// ------------------------------------------------------------------------------ JSON → XML

type XmlWriter = Writer<Vec<u8>>;

/// A document with its XML declaration written.
fn xml_document() -> io::Result<XmlWriter> {
    let mut xml = Writer::new(Vec::new());
    xml.write_event(Event::Decl(BytesDecl::new("1.0", None, None)))?;
    Ok(xml)
}

/// The XML answer of a successful action.
fn response_xml(operation: &Operation, output: &Value, request_id: &str) -> io::Result<Vec<u8>> {
    let name = operation.name;
    let mut xml = xml_document()?;
    xml.create_element(format!("{name}Response")).with_attribute(("xmlns", XML_NAMESPACE)).write_inner_content(
        |xml| {
            if let Some(members) = operation.output {
                xml.create_element(format!("{name}Result")).write_inner_content(|xml| match output {
                    Value::Object(fields) => write_members(xml, fields, members),
                    _ => Ok(()),
                })?;
            }
            xml.create_element("ResponseMetadata")
                .write_inner_content(|xml| text_element(xml, "RequestId", request_id))?;
            Ok(())
        },
    )?;
    Ok(xml.into_inner())
}

/// How the query protocol words a queue that does not exist.
const QUERY_NO_SUCH_QUEUE: &str = "The specified queue does not exist for this wsdl version.";

/// The XML answer of a failed request.
fn error_xml(e: &SqsError, request_id: &str) -> io::Result<Vec<u8>> {
    let fault = if e.sender_fault { "Sender" } else { "Receiver" };
    let mut xml = xml_document()?;
    xml.create_element("ErrorResponse").with_attribute(("xmlns", XML_NAMESPACE)).write_inner_content(|xml| {
        xml.create_element("Error").write_inner_content(|xml| {
            text_element(xml, "Type", fault)?;
            text_element(xml, "Code", e.query_code)?;
            // The query protocol's own wording of a missing queue, as SQS answers it.
            let message = if e.code == "QueueDoesNotExist" { QUERY_NO_SUCH_QUEUE } else { e.message.as_str() };
            text_element(xml, "Message", message)?;
            xml.create_element("Detail").write_empty()?;
            Ok(())
        })?;
        text_element(xml, "RequestId", request_id)
    })?;
    Ok(xml.into_inner())
}

/// Writes the members of a structure in the model's order. Fields the table does not know are
/// left out (the table names every field the actions answer).
fn write_members(xml: &mut XmlWriter, fields: &Map<String, Value>, members: &[Member]) -> io::Result<()> {
    for member in members {
        if let Some(value) = fields.get(member.json).filter(|v| !v.is_null()) {
            write_value(xml, member.wire, value, &member.shape)?;
        }
    }
    Ok(())
}

fn write_value(xml: &mut XmlWriter, name: &str, value: &Value, shape: &Shape) -> io::Result<()> {
    match (shape, value) {
        (Shape::List(item), Value::Array(items)) => {
            for value in items {
                write_value(xml, name, value, item)?;
            }
        }
        (Shape::Map { key, value: value_name, shape }, Value::Object(entries)) => {
            for (entry_key, entry_value) in entries {
                xml.create_element(name).write_inner_content(|xml| {
                    text_element(xml, key, entry_key)?;
                    write_value(xml, value_name, entry_value, shape)
                })?;
            }
        }
        (Shape::Structure(members), Value::Object(fields)) => {
            xml.create_element(name).write_inner_content(|xml| write_members(xml, fields, members))?;
        }
        (_, Value::String(s)) => text_element(xml, name, s)?,
        (_, Value::Bool(b)) => text_element(xml, name, if *b { "true" } else { "false" })?,
        (_, Value::Number(n)) => text_element(xml, name, &n.to_string())?,
        // A shape mismatch between the actions and the table: answer the JSON text rather than
        // drop the field.
        (_, other) => text_element(xml, name, &other.to_string())?,
    }
    Ok(())
}

/// `<name>text</name>`.
fn text_element(xml: &mut XmlWriter, name: &str, text: &str) -> io::Result<()> {
    xml.create_element(name).write_text_content(character_data(text))?;
    Ok(())
}

/// `text` as XML character data. Besides the markup characters (escaped by quick-xml), a carriage
/// return is written as a reference: XML parsers turn a literal CR (and CRLF) into LF, which would
/// change a message body and break its MD5. Characters XML 1.0 cannot carry at all (most C0
/// controls, U+FFFE, U+FFFF; message bodies cannot contain them) become U+FFFD.
fn character_data(text: &str) -> BytesText<'static> {
    // XML 1.0's characters are the ones message bodies may hold.
    let carried = crate::queue_rules::valid_body_char;
    let text: Cow<'_, str> = if text.chars().all(carried) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.chars().map(|c| if carried(c) { c } else { '\u{FFFD}' }).collect())
    };
    let escaped = quick_xml::escape::escape(text);
    let escaped = if escaped.contains('\r') { escaped.replace('\r', "&#xD;") } else { escaped.into_owned() };
    BytesText::from_escaped(escaped)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn response_xml(operation: &Operation, output: &Value, request_id: &str) -> String {
        String::from_utf8(super::response_xml(operation, output, request_id).expect("written")).expect("UTF-8")
    }

    fn error_xml(e: &SqsError, request_id: &str) -> String {
        String::from_utf8(super::error_xml(e, request_id).expect("written")).expect("UTF-8")
    }

    fn input(form: &str) -> Result<(&'static str, Value), SqsError> {
        let mut params = Vec::new();
        parse_form(form.as_bytes(), &mut params)?;
        let (operation, input) = to_input(params)?;
        Ok((operation.name, Value::Object(input)))
    }

    fn ok(form: &str) -> Value {
        match input(form) {
            Ok((_, value)) => value,
            Err(e) => panic!("{form}: {e:?}"),
        }
    }

    fn err(form: &str) -> SqsError {
        match input(form) {
            Ok((_, value)) => panic!("{form} converted to {value}"),
            Err(e) => e,
        }
    }

    #[test]
    fn send_message_with_attributes_of_every_type() {
        let value = ok("Action=SendMessage&Version=2012-11-05&QueueUrl=http%3A%2F%2Fh%2Fdev%2Fq\
             &MessageBody=a+b%2Bc%26%3D&DelaySeconds=5\
             &MessageAttribute.1.Name=s&MessageAttribute.1.Value.DataType=String&MessageAttribute.1.Value.StringValue=v\
             &MessageAttribute.2.Name=b&MessageAttribute.2.Value.DataType=Binary&MessageAttribute.2.Value.BinaryValue=AAEC\
             &MessageAttribute.3.Name=n&MessageAttribute.3.Value.DataType=Number.int&MessageAttribute.3.Value.StringValue=-4");
        assert_eq!(
            value,
            json!({
                "QueueUrl": "http://h/dev/q",
                "MessageBody": "a b+c&=",
                "DelaySeconds": 5,
                "MessageAttributes": {
                    "s": {"DataType": "String", "StringValue": "v"},
                    "b": {"DataType": "Binary", "BinaryValue": "AAEC"},
                    "n": {"DataType": "Number.int", "StringValue": "-4"},
                },
            })
        );
    }

    #[test]
    fn send_message_batch_entries_in_index_order() {
        let value = ok("Action=SendMessageBatch&QueueUrl=u\
             &SendMessageBatchRequestEntry.2.Id=b&SendMessageBatchRequestEntry.2.MessageBody=two\
             &SendMessageBatchRequestEntry.10.Id=c&SendMessageBatchRequestEntry.10.MessageBody=ten\
             &SendMessageBatchRequestEntry.10.DelaySeconds=3\
             &SendMessageBatchRequestEntry.1.Id=a&SendMessageBatchRequestEntry.1.MessageBody=one\
             &SendMessageBatchRequestEntry.1.MessageAttribute.1.Name=k\
             &SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType=String\
             &SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.StringValue=v");
        assert_eq!(
            value,
            json!({
                "QueueUrl": "u",
                "Entries": [
                    {"Id": "a", "MessageBody": "one", "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}}},
                    {"Id": "b", "MessageBody": "two"},
                    {"Id": "c", "MessageBody": "ten", "DelaySeconds": 3},
                ],
            })
        );
    }

    #[test]
    fn delete_and_visibility_batches() {
        let value = ok("Action=DeleteMessageBatch&QueueUrl=u&DeleteMessageBatchRequestEntry.1.Id=a\
             &DeleteMessageBatchRequestEntry.1.ReceiptHandle=r%2B1&DeleteMessageBatchRequestEntry.2.Id=b\
             &DeleteMessageBatchRequestEntry.2.ReceiptHandle=r2");
        assert_eq!(
            value,
            json!({"QueueUrl": "u", "Entries": [{"Id": "a", "ReceiptHandle": "r+1"}, {"Id": "b", "ReceiptHandle": "r2"}]})
        );
        let value = ok("Action=ChangeMessageVisibilityBatch&QueueUrl=u\
             &ChangeMessageVisibilityBatchRequestEntry.1.Id=a\
             &ChangeMessageVisibilityBatchRequestEntry.1.ReceiptHandle=r\
             &ChangeMessageVisibilityBatchRequestEntry.1.VisibilityTimeout=30");
        assert_eq!(
            value,
            json!({"QueueUrl": "u", "Entries": [{"Id": "a", "ReceiptHandle": "r", "VisibilityTimeout": 30}]})
        );
    }

    #[test]
    fn maps_and_lists() {
        let value = ok("Action=CreateQueue&QueueName=q&Attribute.1.Name=DelaySeconds&Attribute.1.Value=5\
             &Attribute.2.Name=VisibilityTimeout&Attribute.2.Value=60&Tag.1.Key=team&Tag.1.Value=a");
        assert_eq!(
            value,
            json!({
                "QueueName": "q",
                "Attributes": {"DelaySeconds": "5", "VisibilityTimeout": "60"},
                "tags": {"team": "a"},
            })
        );
        let value = ok("Action=ReceiveMessage&QueueUrl=u&AttributeName.1=All&MessageAttributeName.1=a.*\
             &MessageAttributeName.2=b&MessageSystemAttributeName.1=SenderId&MaxNumberOfMessages=10&WaitTimeSeconds=0");
        assert_eq!(
            value,
            json!({
                "QueueUrl": "u",
                "AttributeNames": ["All"],
                "MessageAttributeNames": ["a.*", "b"],
                "MessageSystemAttributeNames": ["SenderId"],
                "MaxNumberOfMessages": 10,
                "WaitTimeSeconds": 0,
            })
        );
        assert_eq!(
            ok("Action=UntagQueue&QueueUrl=u&TagKey.1=a&TagKey.2=b"),
            json!({"QueueUrl": "u", "TagKeys": ["a", "b"]})
        );
        assert_eq!(
            ok("Action=TagQueue&QueueUrl=u&Tag.1.Key=a&Tag.1.Value="),
            json!({"QueueUrl": "u", "Tags": {"a": ""}})
        );
        // botocore's query serializer sends an empty list under the JSON name.
        assert_eq!(
            ok("Action=GetQueueAttributes&QueueUrl=u&AttributeNames="),
            json!({"QueueUrl": "u", "AttributeNames": []})
        );
        assert_eq!(ok("Action=ListQueues"), json!({}));
    }

    #[test]
    fn presigned_parameters_are_left_to_sigv4() {
        assert_eq!(
            ok("Action=ListQueues&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab&QueueNamePrefix=p"),
            json!({"QueueNamePrefix": "p"})
        );
    }

    #[test]
    fn garbage_is_refused_with_the_parameter_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("QueueName=q", "MissingAction", "Action"),
            ("Action=Nope", "InvalidAction", "Nope"),
            ("Action=ListQueues&Version=2008-01-01", "NoSuchVersion", "2012-11-05"),
            ("Action=ListQueues&Action=ListQueues", "MalformedQueryString", "more than once"),
            ("Action=ListQueues&QueueNamePrefix=a&QueueNamePrefix=b", "MalformedQueryString", "more than once"),
            ("Action=ListQueues&QueueNamePrefix=%zz", "MalformedQueryString", "hexadecimal"),
            ("Action=ListQueues&QueueNamePrefix=%ff", "MalformedQueryString", "UTF-8"),
            ("Action=ListQueues&QueueNamePrefix=%4", "MalformedQueryString", "hexadecimal"),
            ("Action=ListQueues&Bogus=1", "InvalidParameterValue", "Unknown parameter Bogus"),
            ("Action=ListQueues&MaxResults=ten", "InvalidParameterValue", "MaxResults"),
            ("Action=ListQueues&MaxResults=99999999999999999999", "InvalidParameterValue", "MaxResults"),
            ("Action=ListQueues&QueueNamePrefix.1=a", "InvalidParameterValue", "QueueNamePrefix.1"),
            ("Action=ReceiveMessage&AttributeNames.1=All", "InvalidParameterValue", "AttributeName.N"),
            ("Action=ReceiveMessage&AttributeName=All", "InvalidParameterValue", "AttributeName.1"),
            ("Action=ReceiveMessage&AttributeName.0=All", "InvalidParameterValue", "AttributeName.0"),
            ("Action=ReceiveMessage&AttributeName.101=All", "InvalidParameterValue", "AttributeName.101"),
            ("Action=ReceiveMessage&AttributeName.01=All", "InvalidParameterValue", "AttributeName.01"),
            ("Action=ReceiveMessage&AttributeName.x=All", "InvalidParameterValue", "AttributeName.x"),
            ("Action=ReceiveMessage&AttributeName.1.x=All", "InvalidParameterValue", "AttributeName.1.x"),
            ("Action=CreateQueue&Attribute.1.Name=A", "MissingParameter", "Attribute.1.Value"),
            ("Action=CreateQueue&Attribute.1.Value=1", "MissingParameter", "Attribute.1.Name"),
            (
                "Action=CreateQueue&Attribute.1.Name=A&Attribute.1.Value=1&Attribute.1.Other=2",
                "InvalidParameterValue",
                "Other",
            ),
            (
                "Action=CreateQueue&Attribute.1.Name=A&Attribute.1.Value=1&Attribute.2.Name=A&Attribute.2.Value=2",
                "InvalidParameterValue",
                "more than once",
            ),
            ("Action=CreateQueue&Attribute.1=x", "InvalidParameterValue", "Attribute.1"),
            (
                "Action=SendMessage&MessageAttribute.1.Name=a&MessageAttribute.1.Value=x",
                "InvalidParameterValue",
                "structure",
            ),
            (
                "Action=SendMessage&MessageAttribute.1.Name=a&MessageAttribute.1.Value.Nope=x",
                "InvalidParameterValue",
                "Nope",
            ),
            ("Action=ListQueues&a.b.c.d.e.f.g.h.i=1", "MalformedQueryString", "parts"),
            ("Action=ListQueues&a..b=1", "MalformedQueryString", "empty part"),
        ];
        for (form, code, needle) in cases {
            let e = err(form);
            assert_eq!(e.query_code, *code, "{form}: {e:?}");
            assert!(e.message.contains(needle), "{form}: {e:?} should mention {needle}");
        }
        let long_name = format!("Action=ListQueues&{}=1", "a".repeat(NAME_BYTES_MAX + 1));
        assert_eq!(err(&long_name).query_code, "MalformedQueryString");
        let many: String = (0..PARAMS_MAX).map(|i| format!("&p{i}=1")).collect();
        let e = err(&format!("Action=ListQueues{many}"));
        assert!(e.message.contains("at most"), "{e:?}");
    }

    #[test]
    fn no_input_panics() {
        // A bounded sweep over short strings of the characters that carry structure.
        let alphabet = ["Action=SendMessage", "&", "=", ".", "1", "%", "+", "MessageAttribute", "Value", "Name", "0"];
        let mut count = 0;
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    for d in alphabet {
                        let _ = input(&format!("{a}{b}{c}{d}"));
                        count += 1;
                    }
                }
            }
        }
        assert_eq!(count, alphabet.len().pow(4));
    }

    #[test]
    fn queue_paths() {
        assert_eq!(queue_path("/dev/orders"), Some("/dev/orders"));
        assert_eq!(queue_path("/"), None);
        assert_eq!(queue_path("/dev"), None);
        assert_eq!(queue_path("/dev/"), None);
        assert_eq!(queue_path("/a/b/c"), None);
    }

    #[test]
    fn receive_message_answers_attributes_as_name_value_pairs() {
        let output = json!({"Messages": [{
            "MessageId": "m1",
            "ReceiptHandle": "r1",
            "MD5OfBody": "d",
            "Body": "hello",
            "Attributes": {"SenderId": "dev", "SentTimestamp": "1700000000000"},
            "MD5OfMessageAttributes": "e",
            "MessageAttributes": {
                "b": {"DataType": "Binary", "BinaryValue": "AAEC"},
                "s": {"DataType": "String", "StringValue": "v"},
            },
        }]});
        let op = operation("ReceiveMessage").expect("in the table");
        assert_eq!(
            response_xml(op, &output, "req-1"),
            "<?xml version=\"1.0\"?><ReceiveMessageResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\">\
             <ReceiveMessageResult><Message><MessageId>m1</MessageId><ReceiptHandle>r1</ReceiptHandle>\
             <MD5OfBody>d</MD5OfBody><Body>hello</Body>\
             <Attribute><Name>SenderId</Name><Value>dev</Value></Attribute>\
             <Attribute><Name>SentTimestamp</Name><Value>1700000000000</Value></Attribute>\
             <MD5OfMessageAttributes>e</MD5OfMessageAttributes>\
             <MessageAttribute><Name>b</Name><Value><BinaryValue>AAEC</BinaryValue><DataType>Binary</DataType></Value></MessageAttribute>\
             <MessageAttribute><Name>s</Name><Value><StringValue>v</StringValue><DataType>String</DataType></Value></MessageAttribute>\
             </Message></ReceiveMessageResult>\
             <ResponseMetadata><RequestId>req-1</RequestId></ResponseMetadata></ReceiveMessageResponse>"
        );
    }

    #[test]
    fn batch_result_with_failures() {
        let output = json!({
            "Successful": [{"Id": "a", "MessageId": "m", "MD5OfMessageBody": "d"}],
            "Failed": [{"Id": "b", "SenderFault": true, "Code": "InvalidParameterValue", "Message": "too <long>"}],
        });
        let op = operation("SendMessageBatch").expect("in the table");
        let xml = response_xml(op, &output, "r");
        assert!(
            xml.contains(
                "<SendMessageBatchResult><SendMessageBatchResultEntry><Id>a</Id><MessageId>m</MessageId>\
                 <MD5OfMessageBody>d</MD5OfMessageBody></SendMessageBatchResultEntry>\
                 <BatchResultErrorEntry><Id>b</Id><SenderFault>true</SenderFault><Code>InvalidParameterValue</Code>\
                 <Message>too &lt;long&gt;</Message></BatchResultErrorEntry></SendMessageBatchResult>"
            ),
            "{xml}"
        );
        let op = operation("DeleteMessageBatch").expect("in the table");
        let xml = response_xml(op, &json!({"Successful": [{"Id": "a"}], "Failed": []}), "r");
        assert!(
            xml.contains(
                "<DeleteMessageBatchResult><DeleteMessageBatchResultEntry><Id>a</Id></DeleteMessageBatchResultEntry>\
                 </DeleteMessageBatchResult>"
            ),
            "{xml}"
        );
    }

    #[test]
    fn other_results() {
        let xml = response_xml(
            operation("ListQueues").expect("in the table"),
            &json!({"QueueUrls": ["http://h/dev/a", "http://h/dev/b"], "NextToken": "t"}),
            "r",
        );
        assert!(
            xml.contains(
                "<ListQueuesResult><QueueUrl>http://h/dev/a</QueueUrl><QueueUrl>http://h/dev/b</QueueUrl>\
                 <NextToken>t</NextToken></ListQueuesResult>"
            ),
            "{xml}"
        );
        let xml = response_xml(
            operation("GetQueueAttributes").expect("in the table"),
            &json!({"Attributes": {"DelaySeconds": "5"}}),
            "r",
        );
        assert!(xml.contains("<Attribute><Name>DelaySeconds</Name><Value>5</Value></Attribute>"), "{xml}");
        let xml = response_xml(operation("ListQueueTags").expect("in the table"), &json!({"Tags": {"k": "v"}}), "r");
        assert!(xml.contains("<ListQueueTagsResult><Tag><Key>k</Key><Value>v</Value></Tag></ListQueueTagsResult>"));
        // An action without output has no Result element.
        let xml = response_xml(operation("DeleteQueue").expect("in the table"), &json!({}), "r");
        assert!(xml.contains("<DeleteQueueResponse xmlns") && !xml.contains("Result"), "{xml}");
    }

    #[test]
    fn xml_escaping() {
        let output = json!({"Messages": [{"Body": "<a href=\"x\">&'</a>]]>\r\n\tend\u{1}"}]});
        let xml = response_xml(operation("ReceiveMessage").expect("in the table"), &output, "r");
        assert!(
            xml.contains("<Body>&lt;a href=&quot;x&quot;&gt;&amp;&apos;&lt;/a&gt;]]&gt;&#xD;\n\tend\u{FFFD}</Body>"),
            "{xml}"
        );
    }

    #[test]
    fn error_document() {
        let e = SqsError::no_such_queue();
        assert_eq!(
            error_xml(&e, "r<1>"),
            "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"http://queue.amazonaws.com/doc/2012-11-05/\"><Error>\
             <Type>Sender</Type><Code>AWS.SimpleQueueService.NonExistentQueue</Code>\
             <Message>The specified queue does not exist for this wsdl version.</Message><Detail/></Error>\
             <RequestId>r&lt;1&gt;</RequestId></ErrorResponse>"
        );
        let e = SqsError::internal_error("x & y");
        assert!(error_xml(&e, "r").contains("<Type>Receiver</Type><Code>InternalError</Code><Message>x &amp; y"));
    }

    #[test]
    fn every_action_is_in_the_table() {
        for name in [
            "CreateQueue",
            "GetQueueUrl",
            "ListQueues",
            "DeleteQueue",
            "GetQueueAttributes",
            "SetQueueAttributes",
            "PurgeQueue",
            "SendMessage",
            "SendMessageBatch",
            "ReceiveMessage",
            "DeleteMessage",
            "DeleteMessageBatch",
            "ChangeMessageVisibility",
            "ChangeMessageVisibilityBatch",
            "TagQueue",
            "UntagQueue",
            "ListQueueTags",
            "ListDeadLetterSourceQueues",
            "StartMessageMoveTask",
            "ListMessageMoveTasks",
            "CancelMessageMoveTask",
            "AddPermission",
            "RemovePermission",
        ] {
            assert!(operation(name).is_some(), "{name}");
        }
        assert_eq!(OPERATIONS.len(), 23);
    }

    /// The SQS routes (`/`, `/{account}/{queue}`) leave the native API its routes.
    #[tokio::test]
    async fn routes_reach_the_right_api() {
        use std::sync::Arc;

        use axum::body::{Body, to_bytes};
        use axum::http::Request;
        use tower::ServiceExt;

        use crate::auth::{JwtKey, JwtVerifier};

        let settings = crate::ProxySettings {
            // Never dialed: no request below gets past authentication.
            metadata_endpoint: "https://127.0.0.1:9".into(),
            tls: strata_tls::pki::test_credentials(strata_tls::Role::Proxy, "proxy"),
            verifier: JwtVerifier::new("issuer", "audience", vec![JwtKey::hmac("k", b"secret")]),
            co_located_storage: None,
            clock: Arc::new(strata_common::ManualClock::new(0)),
            random: strata_common::Random::seeded(1),
            admin_verifier: JwtVerifier::new("issuer", "admin", vec![JwtKey::hmac("k", b"secret")]),
            metering: false,
            fleet_proxies: 1,
            concurrency: Default::default(),
        };
        let router = crate::router(settings).expect("router").api;
        // The verifier reads the system clock.
        let now_s = strata_common::Clock::now_ms(&strata_common::SystemClock) / 1000;
        let issuer = crate::auth::JwtIssuer::hmac("k", b"secret", "issuer", "audience");
        let token = issuer.mint("t", 60, now_s).expect("token");
        let bearer = format!("Bearer {token}");
        // Method, path, headers, expected status, text the body must contain.
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], u16, &'a str);
        let cases: &[Case] = &[
            ("GET", "/healthz", &[], 200, "ok"),
            ("GET", "/openapi.json", &[], 200, "\"openapi\""),
            ("GET", "/v1/queues", &[], 401, "\"Unauthenticated\""),
            ("POST", "/v1/queues", &[], 401, "\"Unauthenticated\""),
            ("GET", "/v1/queues/orders", &[], 401, "\"Unauthenticated\""),
            ("POST", "/v1/access-keys", &[], 401, "\"Unauthenticated\""),
            ("POST", "/v1/nope", &[], 404, "\"UnknownRoute\""),
            ("GET", "/v1/queues/orders/nope", &[], 404, "\"UnknownRoute\""),
            ("PUT", "/v1/queues", &[], 405, "\"UnknownRoute\""),
            ("DELETE", "/openapi.json", &[], 405, "\"UnknownRoute\""),
            ("GET", "/a/b/c", &[], 404, "\"UnknownRoute\""),
            // A path that is not UTF-8 once decoded: a JSON error too, not the framework's text.
            ("GET", "/v1/queues/%FF%FE", &[("authorization", &bearer)], 400, "\"InvalidParameter\""),
            ("GET", "/?Action=ListQueues", &[], 403, "<Code>MissingAuthenticationToken</Code>"),
            ("GET", "/dev/orders?Action=GetQueueAttributes", &[], 403, "<ErrorResponse"),
            ("POST", "/", &[("content-type", FORM_CONTENT_TYPE)], 403, "<Type>Sender</Type>"),
            ("POST", "/dev/orders", &[("content-type", FORM_CONTENT_TYPE)], 403, "<ErrorResponse"),
            (
                "POST",
                "/",
                &[("x-amz-target", "AmazonSQS.ListQueues"), ("content-type", "application/x-amz-json-1.0")],
                403,
                "\"__type\"",
            ),
        ];
        for (method, path, headers, status, needle) in cases {
            let mut request = Request::builder().method(*method).uri(*path);
            for (name, value) in *headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Body::from("Action=ListQueues")).expect("request");
            let response = router.clone().oneshot(request).await.expect("infallible");
            let got = response.status().as_u16();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = to_bytes(response.into_body(), 1 << 20).await.expect("body");
            let body = String::from_utf8_lossy(&body);
            assert_eq!(got, *status, "{method} {path}: {body}");
            assert!(body.contains(needle), "{method} {path}: {body} should contain {needle}");
            if body.starts_with("<?xml") {
                assert_eq!(content_type.as_ref().and_then(|v| v.to_str().ok()), Some(XML_CONTENT_TYPE));
            }
        }
    }
}
