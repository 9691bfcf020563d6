//! Queue operations of the proxy's front doors: the shared ones (create, delete, reconfigure,
//! routed storage calls) come from `strata-storage-client`; sending is the proxy's, since its
//! request ids derive from the call's billing identity.

use strata_common::error::StrataError;
use strata_common::metering::MeterRecord;
use strata_common::proto as pb;
pub use strata_storage_client::queues::*;

use crate::metering::CallId;
use crate::routing::Router as Placement;

/// Sends messages to a tenant's queue, stored once however often the call is retried: the
/// storage request id derives from the client's id when it gave one, and is otherwise generated
/// once for every attempt of this call (a retry at another replica is stored once). `meter` is
/// the call's metering record, stored with the messages (see [`crate::metering::Meter::record`]).
pub async fn send(
    placement: &Placement,
    tenant: &str,
    name: &str,
    call: &CallId,
    messages: Vec<pb::NewMessage>,
    meter: Option<MeterRecord>,
    caller: Option<pb::Caller>,
) -> Result<pb::SendResponse, StrataError> {
    let generated = placement.metadata.random().uuid().to_string();
    on_queue(placement, tenant, name, |mut c, q| {
        let request_id = call.send_request_id(tenant, q.queue_id).unwrap_or_else(|| generated.clone());
        let (messages, meter, caller) = (messages.clone(), meter.clone().map(Into::into), caller.clone());
        async move { c.send(pb::SendRequest { queue: Some(q), messages, request_id, meter, caller }).await }
    })
    .await
}

/// Links the current span (a receive's) to the spans that sent the messages it got, when they
/// kept trace headers.
pub fn link_to_sends(received: &pb::ReceiveResponse) {
    for message in received.messages.iter().filter(|m| !m.trace_header.is_empty()) {
        strata_telemetry::trace::link_to(&message.trace_header);
    }
}
