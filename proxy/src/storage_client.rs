//! Client of the storage node's gRPC API, with one cached channel per node address.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use strata_common::error::StrataError;
use strata_common::limits;
use strata_common::proto::storage_client;
use tonic::transport::Channel;

/// Deadline of one storage call: the longest long poll plus slack for the write itself.
const STORAGE_CALL_TIMEOUT: Duration = Duration::from_millis(limits::LONG_POLL_MS_MAX + 10_000);

pub type StorageGrpcClient = storage_client::StorageClient<Channel>;

/// Hands out clients by node address; cheap to clone clients share the HTTP/2 connection.
#[derive(Default)]
pub struct StorageClients {
    by_address: Mutex<HashMap<String, StorageGrpcClient>>,
}

impl StorageClients {
    pub fn get(&self, address: &str) -> Result<StorageGrpcClient, StrataError> {
        if let Some(client) = self.by_address.lock().get(address) {
            return Ok(client.clone());
        }
        let channel = strata_common::grpc::lazy_channel(address, STORAGE_CALL_TIMEOUT)
            .map_err(|e| StrataError::internal(format!("bad storage address '{address}': {e}")))?;
        let client = storage_client::StorageClient::new(channel)
            .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX);
        self.by_address.lock().insert(address.to_string(), client.clone());
        Ok(client)
    }
}
