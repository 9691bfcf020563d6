//! What the Raft tests share: a trivial replicated state, the list of applied commands, with a
//! persisted form (each test implements `ReplicatedState` for it with the responses it needs).

use serde::{Deserialize, Serialize};
use strata_common::format::{Persisted, postcard_into, postcard_of_versions};

/// The applied commands, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Applied(pub(crate) Vec<String>);

impl Persisted for Applied {
    const VERSIONS: &'static [u8] = &[0, 1];

    fn encode_body(&self, _version: u8, out: &mut Vec<u8>) -> std::io::Result<()> {
        postcard_into(&self.0, out)
    }

    fn decode_body(version: u8, body: &[u8]) -> std::io::Result<Self> {
        postcard_of_versions("applied", version, Self::VERSIONS, body).map(Applied)
    }
}
