//! The metadata client every other component uses. Cheap to clone (one HTTP/2 channel).
//!
//! Every call returns a [`StrataError`] whose kind survived the wire; transport failures come
//! back as `Unavailable`, so callers retry instead of blaming the tenant.

use std::time::Duration;

use strata_common::error::StrataError;
use strata_common::limits;
use strata_common::proto::{self as pb, metadata_client};
use tonic::transport::Channel;

/// Deadline of one metadata call.
const METADATA_CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct MetadataClient {
    inner: metadata_client::MetadataClient<Channel>,
}

impl MetadataClient {
    /// A client for `endpoint` (e.g. `http://127.0.0.1:9400`); connects lazily.
    pub fn connect_lazy(endpoint: &str) -> Result<Self, StrataError> {
        let channel = strata_common::grpc::lazy_channel(endpoint, METADATA_CALL_TIMEOUT)
            .map_err(|e| StrataError::invalid(format!("bad metadata endpoint '{endpoint}': {e}")))?;
        let inner = metadata_client::MetadataClient::new(channel)
            .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
        Ok(Self { inner })
    }

    pub async fn ensure_tenant(&self, tenant: &str) -> Result<pb::Tenant, StrataError> {
        let r = self.inner.clone().ensure_tenant(pb::EnsureTenantRequest { tenant: tenant.to_string() }).await?;
        Ok(r.into_inner())
    }

    pub async fn create_queue(
        &self,
        tenant: &str,
        name: &str,
        config: pb::QueueConfig,
    ) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::CreateQueueRequest {
            tenant: tenant.to_string(),
            name: name.to_string(),
            config: Some(config),
            now_ms: 0,
        };
        Ok(self.inner.clone().create_queue(request).await?.into_inner())
    }

    pub async fn get_queue(&self, tenant: &str, name: &str) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::QueueName { tenant: tenant.to_string(), name: name.to_string() };
        Ok(self.inner.clone().get_queue(request).await?.into_inner())
    }

    pub async fn list_queues(
        &self,
        tenant: &str,
        prefix: &str,
        start_after: &str,
        max_results: u32,
    ) -> Result<pb::ListQueuesResponse, StrataError> {
        let request = pb::ListQueuesRequest {
            tenant: tenant.to_string(),
            prefix: prefix.to_string(),
            max_results,
            start_after: start_after.to_string(),
        };
        Ok(self.inner.clone().list_queues(request).await?.into_inner())
    }

    pub async fn delete_queue(&self, tenant: &str, name: &str) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::QueueName { tenant: tenant.to_string(), name: name.to_string() };
        Ok(self.inner.clone().delete_queue(request).await?.into_inner())
    }

    pub async fn set_queue_config(
        &self,
        tenant: &str,
        name: &str,
        config: pb::QueueConfig,
    ) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::SetQueueConfigRequest {
            tenant: tenant.to_string(),
            name: name.to_string(),
            config: Some(config),
            now_ms: 0,
        };
        Ok(self.inner.clone().set_queue_config(request).await?.into_inner())
    }

    pub async fn register_storage_node(
        &self,
        node_id: &str,
        address: &str,
        initial_shards: u32,
    ) -> Result<Vec<pb::ShardInfo>, StrataError> {
        let request = pb::RegisterStorageNodeRequest {
            node_id: node_id.to_string(),
            address: address.to_string(),
            initial_shards,
        };
        Ok(self.inner.clone().register_storage_node(request).await?.into_inner().shards)
    }

    pub async fn get_shard(&self, shard_id: u64) -> Result<pb::ShardInfo, StrataError> {
        Ok(self.inner.clone().get_shard(pb::GetShardRequest { shard_id }).await?.into_inner())
    }

    pub async fn commit_segment(&self, segment: pb::Segment) -> Result<(), StrataError> {
        self.inner.clone().commit_segment(pb::CommitSegmentRequest { segment: Some(segment) }).await?;
        Ok(())
    }

    pub async fn list_segments(&self, shard_id: u64) -> Result<Vec<pb::Segment>, StrataError> {
        Ok(self.inner.clone().list_segments(pb::ListSegmentsRequest { shard_id }).await?.into_inner().segments)
    }

    pub async fn remove_segments(&self, shard_id: u64, object_keys: Vec<String>) -> Result<(), StrataError> {
        self.inner.clone().remove_segments(pb::RemoveSegmentsRequest { shard_id, object_keys }).await?;
        Ok(())
    }

    /// A new access key of `tenant`, with its secret (shown only here).
    pub async fn create_access_key(&self, tenant: &str) -> Result<pb::AccessKey, StrataError> {
        let request = pb::CreateAccessKeyRequest { tenant: tenant.to_string() };
        Ok(self.inner.clone().create_access_key(request).await?.into_inner())
    }

    /// Replaces `access_key_id` by a new key (answered with its secret); the old one keeps
    /// working for `grace_ms`.
    pub async fn rotate_access_key(
        &self,
        tenant: &str,
        access_key_id: &str,
        grace_ms: u64,
    ) -> Result<pb::AccessKey, StrataError> {
        let request = pb::RotateAccessKeyRequest {
            tenant: tenant.to_string(),
            access_key_id: access_key_id.to_string(),
            grace_ms,
        };
        Ok(self.inner.clone().rotate_access_key(request).await?.into_inner())
    }

    pub async fn revoke_access_key(&self, tenant: &str, access_key_id: &str) -> Result<pb::AccessKey, StrataError> {
        let request = pb::AccessKeyRef { tenant: tenant.to_string(), access_key_id: access_key_id.to_string() };
        Ok(self.inner.clone().revoke_access_key(request).await?.into_inner())
    }

    /// The tenant's keys without secrets.
    pub async fn list_access_keys(&self, tenant: &str) -> Result<Vec<pb::AccessKey>, StrataError> {
        let request = pb::ListAccessKeysRequest { tenant: tenant.to_string() };
        Ok(self.inner.clone().list_access_keys(request).await?.into_inner().keys)
    }

    /// A key with its secret, whatever its state (the proxy's SigV4 check).
    pub async fn lookup_access_key(&self, access_key_id: &str) -> Result<pb::AccessKey, StrataError> {
        let request = pb::LookupAccessKeyRequest { access_key_id: access_key_id.to_string() };
        Ok(self.inner.clone().lookup_access_key(request).await?.into_inner())
    }

    /// Adds or replaces tags of a queue; answers the queue with all its tags.
    pub async fn tag_queue(
        &self,
        tenant: &str,
        name: &str,
        tags: std::collections::HashMap<String, String>,
    ) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::TagQueueRequest { tenant: tenant.to_string(), name: name.to_string(), tags };
        Ok(self.inner.clone().tag_queue(request).await?.into_inner())
    }

    pub async fn untag_queue(&self, tenant: &str, name: &str, keys: Vec<String>) -> Result<pb::QueueInfo, StrataError> {
        let request = pb::UntagQueueRequest { tenant: tenant.to_string(), name: name.to_string(), keys };
        Ok(self.inner.clone().untag_queue(request).await?.into_inner())
    }
}
