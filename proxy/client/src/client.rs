//! [`Client`]: calls of the native API with the types of [`crate::model`], and of the operators'
//! admin API on an admin endpoint. Every call has a timeout; an error answer becomes
//! [`ClientError::Api`] with the service's stable code.

use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{self, admin};

/// Longest a call may take (a long poll waits at most 20 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The characters a path segment keeps unencoded (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: the endpoint cannot be reached, or the call timed out.
    #[error("cannot reach {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error; a throttled call says when to retry.
    #[error("{code} ({status}): {message}")]
    Api { status: u16, code: String, message: String, retry_after_s: Option<u64> },
    /// The answer is not what the API describes.
    #[error("unexpected answer from {url}: {detail}")]
    Decode { url: String, detail: String },
}

impl ClientError {
    /// The service's error code (`QueueNotFound`, `Throttled`, ...), for an error answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The connection could not be opened: the call never reached the service and surely had
    /// no effect (unlike a timeout or a connection lost mid-call).
    pub fn never_sent(&self) -> bool {
        matches!(self, ClientError::Transport { source, .. } if source.is_connect())
    }
}

/// An answer as it came.
struct Answer {
    status: u16,
    /// `Retry-After`, in seconds.
    retry_after_s: Option<u64>,
    text: String,
}

/// Whose access keys a call manages.
#[derive(Debug, Clone, Copy)]
pub enum KeyOwner<'a> {
    /// The tenant of the client's token (native API).
    Caller,
    /// A tenant named by an operator (admin API, admin token).
    Tenant(&'a str),
}

/// A client of one endpoint with one bearer token. Cheap to clone (the connection pool is
/// shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    /// Extra headers of every request.
    headers: Vec<(String, String)>,
}

/// `segment` encoded for a URL path.
pub fn path_segment(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

fn queue_path(name: &str) -> String {
    format!("/v1/queues/{}", path_segment(name))
}

impl Client {
    /// A client of `endpoint` (`http://host:port`) calling with `token`.
    pub fn new(endpoint: &str, token: &str) -> Self {
        // Building fails only when the TLS backend cannot start, which this plain-HTTP client
        // does not use; the default client is the same without the timeout.
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build().unwrap_or_default();
        Self::with_http(http, endpoint, token)
    }

    /// A client sharing `http`'s connection pool and settings.
    pub fn with_http(http: reqwest::Client, endpoint: &str, token: &str) -> Self {
        Self {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: Some(token.to_string()),
            headers: Vec::new(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// This client, sending `name: value` with every request as well.
    pub fn with_header(&self, name: &str, value: &str) -> Self {
        let mut headers = self.headers.clone();
        headers.push((name.to_string(), value.to_string()));
        Self { headers, ..self.clone() }
    }

    /// This client, sending no token.
    pub fn without_token(&self) -> Self {
        Self { token: None, ..self.clone() }
    }

    /// This client, sending `token` instead.
    pub fn with_token(&self, token: &str) -> Self {
        Self { token: Some(token.to_string()), ..self.clone() }
    }

    fn request(&self, method: Method, path: &str) -> (String, reqwest::RequestBuilder) {
        let url = format!("{}{path}", self.endpoint);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        (url, request)
    }

    async fn exchange(url: &str, request: reqwest::RequestBuilder) -> Result<Answer, ClientError> {
        let transport = |source| ClientError::Transport { url: url.to_string(), source };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after_s = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = response.text().await.map_err(transport)?;
        Ok(Answer { status, retry_after_s, text })
    }

    /// Any call, answered as it came: the status and the JSON body (`Null` when empty, a string
    /// when not JSON). Fails only when no answer came; for tests of error answers and for routes
    /// without a typed method.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<(u16, Value), ClientError> {
        let (url, mut request) = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let Answer { status, text, .. } = Self::exchange(&url, request).await?;
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok((status, value))
    }

    /// A call whose success answers `T` (`()` for an empty answer); an error answer fails with
    /// its code and message.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let (url, mut request) = self.request(method, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        Self::answer(&url, Self::exchange(&url, request).await?)
    }

    fn answer<T: DeserializeOwned>(url: &str, answer: Answer) -> Result<T, ClientError> {
        let Answer { status, retry_after_s, text } = answer;
        let decode = |e: serde_json::Error| ClientError::Decode { url: url.to_string(), detail: e.to_string() };
        if !(200..300).contains(&status) {
            let (code, message) = match serde_json::from_str::<model::ErrorBody>(&text) {
                Ok(body) => (body.error.code, body.error.message),
                Err(_) => ("Error".to_owned(), text.chars().take(200).collect()),
            };
            return Err(ClientError::Api { status, code, message, retry_after_s });
        }
        if text.is_empty() {
            serde_json::from_value(Value::Null).map_err(decode)
        } else {
            serde_json::from_str(&text).map_err(decode)
        }
    }

    /// A `GET` answered as it came (see [`Client::call`]).
    pub async fn get(&self, path: &str) -> Result<(u16, Value), ClientError> {
        self.call(Method::GET, path, None).await
    }

    /// A `POST` answered as it came (see [`Client::call`]).
    pub async fn post(&self, path: &str, body: Value) -> Result<(u16, Value), ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// A `POST` that must succeed; answers its JSON.
    pub async fn post_ok(&self, path: &str, body: Value) -> Result<Value, ClientError> {
        self.json(Method::POST, path, Some(&body)).await
    }

    async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None::<&Value>).await
    }

    async fn post_as<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, ClientError> {
        self.json(Method::POST, path, Some(body)).await
    }

    async fn delete_as<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::DELETE, path, None::<&Value>).await
    }

    // -------------------------------------------------------------------------------- queues

    pub async fn create_queue(&self, request: &model::CreateQueue) -> Result<model::Queue, ClientError> {
        self.post_as("/v1/queues", request).await
    }

    /// One page of the tenant's queues.
    pub async fn list_queues(&self, query: &model::ListQueuesQuery) -> Result<model::QueueList, ClientError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("prefix", &query.prefix);
        if let Some(max) = query.max_results {
            form.append_pair("max_results", &max.to_string());
        }
        if let Some(token) = &query.next_token {
            form.append_pair("next_token", token);
        }
        self.get_as(&format!("/v1/queues?{}", form.finish())).await
    }

    /// A queue's settings, tags and approximate counts.
    pub async fn get_queue(&self, name: &str) -> Result<model::Queue, ClientError> {
        self.get_as(&queue_path(name)).await
    }

    pub async fn update_queue(
        &self,
        name: &str,
        change: &model::QueueAttributesChange,
    ) -> Result<model::Queue, ClientError> {
        self.json(Method::PATCH, &queue_path(name), Some(change)).await
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), ClientError> {
        self.delete_as(&queue_path(name)).await
    }

    pub async fn purge_queue(&self, name: &str) -> Result<model::PurgeResult, ClientError> {
        self.json(Method::POST, &format!("{}/purge", queue_path(name)), None::<&Value>).await
    }

    /// The queue's metrics from `from` to `to` (Unix seconds; the last hour without them).
    pub async fn queue_metrics(
        &self,
        queue: &str,
        from: Option<u64>,
        to: Option<u64>,
    ) -> Result<model::QueueMetrics, ClientError> {
        let mut params = Vec::new();
        if let Some(from) = from {
            params.push(format!("from={from}"));
        }
        if let Some(to) = to {
            params.push(format!("to={to}"));
        }
        let query = if params.is_empty() { String::new() } else { format!("?{}", params.join("&")) };
        self.get_as(&format!("{}/metrics{query}", queue_path(queue))).await
    }

    /// What happened to message `message_id` of `queue` (see [`model::MessageTrace`]).
    pub async fn message_trace(&self, queue: &str, message_id: &str) -> Result<model::MessageTrace, ClientError> {
        self.get_as(&format!("{}/messages/{}/trace", queue_path(queue), path_segment(message_id))).await
    }

    pub async fn tags(&self, queue: &str) -> Result<model::TagSet, ClientError> {
        self.get_as(&format!("{}/tags", queue_path(queue))).await
    }

    pub async fn tag_queue(&self, queue: &str, tags: &model::TagSet) -> Result<model::TagSet, ClientError> {
        self.post_as(&format!("{}/tags", queue_path(queue)), tags).await
    }

    pub async fn untag_queue(&self, queue: &str, key: &str) -> Result<(), ClientError> {
        self.delete_as(&format!("{}/tags/{}", queue_path(queue), path_segment(key))).await
    }

    // ------------------------------------------------------------------------------ messages

    /// Sends; with `request_id`, a retry is stored once and answered like the first attempt.
    pub async fn send(
        &self,
        queue: &str,
        messages: &model::SendMessages,
        request_id: Option<&str>,
    ) -> Result<model::SendResult, ClientError> {
        let client = match request_id {
            Some(id) => &self.with_header("x-strata-request-id", id),
            None => self,
        };
        client.post_as(&format!("{}/messages", queue_path(queue)), messages).await
    }

    /// Sends a [`model::SendMessages`] already encoded as JSON (a load generator encodes once).
    pub async fn send_encoded(&self, queue: &str, body: Bytes) -> Result<model::SendResult, ClientError> {
        let (url, request) = self.request(Method::POST, &format!("{}/messages", queue_path(queue)));
        let request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        Self::answer(&url, Self::exchange(&url, request).await?)
    }

    pub async fn receive(&self, queue: &str, request: &model::Receive) -> Result<model::ReceiveResult, ClientError> {
        self.post_as(&format!("{}/receive", queue_path(queue)), request).await
    }

    pub async fn delete_messages(
        &self,
        queue: &str,
        request: &model::DeleteMessages,
    ) -> Result<model::DeleteResult, ClientError> {
        self.post_as(&format!("{}/delete", queue_path(queue)), request).await
    }

    pub async fn change_visibility(&self, queue: &str, request: &model::ChangeVisibility) -> Result<(), ClientError> {
        self.post_as(&format!("{}/visibility", queue_path(queue)), request).await
    }

    /// Cancels a message sent with `deliver_at_ms` that is not due yet.
    pub async fn cancel_scheduled(&self, queue: &str, message_id: &str) -> Result<model::CancelResult, ClientError> {
        self.delete_as(&format!("{}/scheduled/{}", queue_path(queue), path_segment(message_id))).await
    }

    // -------------------------------------------------------------------------- dead letters

    pub async fn dead_letter_sources(
        &self,
        queue: &str,
        page: &model::PageQuery,
    ) -> Result<model::DeadLetterSources, ClientError> {
        let mut path = format!("{}/dead-letter-sources", queue_path(queue));
        if let Some(token) = &page.next_token {
            path.push('?');
            path.push_str(&form_urlencoded::Serializer::new(String::new()).append_pair("next_token", token).finish());
        }
        self.get_as(&path).await
    }

    pub async fn start_move_task(
        &self,
        queue: &str,
        request: &model::StartMoveTask,
    ) -> Result<model::MoveTaskStarted, ClientError> {
        self.post_as(&format!("{}/move-tasks", queue_path(queue)), request).await
    }

    pub async fn move_tasks(&self, queue: &str) -> Result<model::MoveTaskList, ClientError> {
        self.get_as(&format!("{}/move-tasks", queue_path(queue))).await
    }

    pub async fn cancel_move_task(&self, queue: &str, task_id: &str) -> Result<model::MoveTaskCancelled, ClientError> {
        self.delete_as(&format!("{}/move-tasks/{}", queue_path(queue), path_segment(task_id))).await
    }

    // --------------------------------------------------------------------- keys and limits

    fn keys_path(owner: KeyOwner<'_>) -> String {
        match owner {
            KeyOwner::Caller => "/v1/access-keys".to_string(),
            KeyOwner::Tenant(tenant) => format!("/admin/v1/tenants/{}/access-keys", path_segment(tenant)),
        }
    }

    /// A new access key; its secret is in this answer only.
    pub async fn create_access_key(&self, owner: KeyOwner<'_>) -> Result<model::AccessKey, ClientError> {
        self.json(Method::POST, &Self::keys_path(owner), None::<&Value>).await
    }

    pub async fn access_keys(&self, owner: KeyOwner<'_>) -> Result<model::AccessKeyList, ClientError> {
        self.get_as(&Self::keys_path(owner)).await
    }

    pub async fn revoke_access_key(&self, owner: KeyOwner<'_>, id: &str) -> Result<model::AccessKey, ClientError> {
        self.delete_as(&format!("{}/{}", Self::keys_path(owner), path_segment(id))).await
    }

    pub async fn rotate_access_key(
        &self,
        owner: KeyOwner<'_>,
        id: &str,
        request: &model::RotateKey,
    ) -> Result<model::AccessKey, ClientError> {
        self.post_as(&format!("{}/{}/rotate", Self::keys_path(owner), path_segment(id)), request).await
    }

    /// The caller's limits (native API), or a tenant's (admin API).
    pub async fn limits(&self, owner: KeyOwner<'_>) -> Result<model::LimitsInfo, ClientError> {
        match owner {
            KeyOwner::Caller => self.get_as("/v1/limits").await,
            KeyOwner::Tenant(tenant) => {
                self.get_as(&format!("/admin/v1/tenants/{}/limits", path_segment(tenant))).await
            }
        }
    }

    // ---------------------------------------------------------------------------------- admin

    pub async fn set_tenant_limits(
        &self,
        tenant: &str,
        request: &admin::SetTenantLimits,
    ) -> Result<model::LimitsInfo, ClientError> {
        self.json(Method::PUT, &format!("/admin/v1/tenants/{}/limits", path_segment(tenant)), Some(request)).await
    }

    pub async fn limit_plans(&self) -> Result<admin::LimitPlanList, ClientError> {
        self.get_as("/admin/v1/limit-plans").await
    }

    pub async fn set_limit_plan(
        &self,
        name: &str,
        limits: &model::TenantLimits,
    ) -> Result<admin::LimitPlan, ClientError> {
        self.json(Method::PUT, &format!("/admin/v1/limit-plans/{}", path_segment(name)), Some(limits)).await
    }

    /// Operators: a page of tenants after `next_token`.
    pub async fn tenants(&self, next_token: Option<&str>) -> Result<admin::TenantList, ClientError> {
        let query = next_token.map(|t| format!("?next_token={}", path_segment(t))).unwrap_or_default();
        self.get_as(&format!("/admin/v1/tenants{query}")).await
    }

    /// Operators: a page of a tenant's queues after `next_token`, with their figures.
    pub async fn tenant_queues(
        &self,
        tenant: &str,
        next_token: Option<&str>,
    ) -> Result<admin::TenantQueues, ClientError> {
        let query = next_token.map(|t| format!("?next_token={}", path_segment(t))).unwrap_or_default();
        self.get_as(&format!("/admin/v1/tenants/{}/queues{query}", path_segment(tenant))).await
    }

    pub async fn storage_nodes(&self) -> Result<admin::StorageNodeList, ClientError> {
        self.get_as("/admin/v1/storage-nodes").await
    }

    /// Starts draining a storage node: its leaderships, then its replicas, move to other
    /// nodes, then it is deregistered (it leaves the list of storage nodes).
    pub async fn drain_node(&self, node_id: &str) -> Result<admin::StorageNode, ClientError> {
        self.post_as(&format!("/admin/v1/storage-nodes/{node_id}/drain"), &serde_json::json!({})).await
    }

    pub async fn shard(&self, shard_id: u64) -> Result<admin::Shard, ClientError> {
        self.get_as(&format!("/admin/v1/shards/{shard_id}")).await
    }

    /// Starts moving a replica; the answer is the shard as the move begins.
    pub async fn move_replica(&self, shard_id: u64, request: &admin::MoveReplica) -> Result<admin::Shard, ClientError> {
        self.post_as(&format!("/admin/v1/shards/{shard_id}/move-replica"), request).await
    }

    /// Adds a shard; the answer is the new shard as placed (its replicas start it within a
    /// heartbeat).
    pub async fn add_shard(&self, request: &admin::AddShard) -> Result<admin::Shard, ClientError> {
        self.post_as("/admin/v1/shards", request).await
    }

    /// Hands a shard's leadership to the replica on `request.to_node`; answers who leads then.
    pub async fn transfer_leader(
        &self,
        shard_id: u64,
        request: &admin::TransferLeader,
    ) -> Result<admin::LeaderTransferred, ClientError> {
        self.post_as(&format!("/admin/v1/shards/{shard_id}/transfer-leader"), request).await
    }

    /// Where a tenant's queue lives: its shard and epoch.
    pub async fn queue_placement(&self, tenant: &str, name: &str) -> Result<admin::QueuePlacement, ClientError> {
        self.get_as(&format!("/admin/v1/tenants/{}/queues/{}/placement", path_segment(tenant), path_segment(name)))
            .await
    }

    /// Starts moving a tenant's queue to another shard; the answer is the move as started (see
    /// [`Client::queue_moves`] for how it goes on).
    /// Splits shard `shard_id`: a new shard on the nodes hosting the fewest shards takes some of its queues
    /// (half by default), each by an online move; answers the moves as started.
    pub async fn split_shard(
        &self,
        shard_id: u64,
        request: &admin::SplitShard,
    ) -> Result<admin::ShardSplit, ClientError> {
        self.post_as(&format!("/admin/v1/shards/{shard_id}/split"), request).await
    }

    pub async fn move_queue(
        &self,
        tenant: &str,
        name: &str,
        request: &admin::MoveQueue,
    ) -> Result<admin::QueueMove, ClientError> {
        self.post_as(&format!("/admin/v1/tenants/{}/queues/{}/move", path_segment(tenant), path_segment(name)), request)
            .await
    }

    /// The last finished queue moves, oldest first, then those under way.
    pub async fn queue_moves(&self) -> Result<admin::QueueMoves, ClientError> {
        self.get_as("/admin/v1/queue-moves").await
    }

    pub async fn metadata_members(&self) -> Result<admin::MetadataMembers, ClientError> {
        self.get_as("/admin/v1/metadata-members").await
    }

    pub async fn change_metadata_members(
        &self,
        request: &admin::ChangeMembers,
    ) -> Result<admin::MetadataMembers, ClientError> {
        self.post_as("/admin/v1/metadata-members", request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, retry_after_s: Option<u64>, text: &str) -> Answer {
        Answer { status, retry_after_s, text: text.to_owned() }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("orders.fifo"), "orders.fifo");
        assert_eq!(path_segment("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(path_segment("ü"), "%C3%BC");
    }

    #[test]
    fn error_answers_keep_their_code_message_and_retry_after() {
        let body = r#"{"error": {"code": "Throttled", "message": "over 10 requests per second"}}"#;
        let e = Client::answer::<model::PurgeResult>("u", answer(429, Some(2), body)).expect_err("an error");
        assert_eq!(e.code(), Some("Throttled"));
        assert!(matches!(e, ClientError::Api { status: 429, retry_after_s: Some(2), .. }), "{e:?}");
        assert_eq!(e.to_string(), "Throttled (429): over 10 requests per second");
        let e = Client::answer::<model::PurgeResult>("u", answer(502, None, "<html>bad gateway</html>"))
            .expect_err("an error");
        assert!(matches!(&e, ClientError::Api { code, .. } if code == "Error"), "{e:?}");
        assert!(!e.never_sent());
    }

    #[test]
    fn answers_decode_into_their_types() {
        let purged: model::PurgeResult = Client::answer("u", answer(200, None, r#"{"purged": 3}"#)).expect("decoded");
        assert_eq!(purged.purged, 3);
        Client::answer::<()>("u", answer(204, None, "")).expect("an empty answer");
        // A newer service may answer more fields.
        let purged: model::PurgeResult =
            Client::answer("u", answer(200, None, r#"{"purged": 1, "later": true}"#)).expect("decoded");
        assert_eq!(purged.purged, 1);
        let e = Client::answer::<model::PurgeResult>("u", answer(200, None, "{}")).expect_err("no purged field");
        assert!(matches!(e, ClientError::Decode { .. }), "{e:?}");
    }
}
