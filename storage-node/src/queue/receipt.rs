//! Receipt handles: the opaque string a consumer gets with each delivery and
//! hands back to delete the message or change its visibility.
//!
//! Wire form: base64url (no padding) of postcard(`version: u8`, `queue`, `seq`,
//! `lease`). `lease` is the log index of the Receive that issued the receipt,
//! so every delivery of a message gets a distinct receipt and a receipt from
//! an earlier delivery can be told apart from the current one.
//!
//! Receipts are tenant input: decoding never panics and rejects anything that
//! is not exactly the canonical encoding of a version-1 receipt. They are not
//! authenticated: a tenant who forges one can only touch messages of a queue it
//! already owns, which it could receive anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::types::QueueId;

const RECEIPT_VERSION: u8 = 1;

/// Longer strings are rejected before decoding. A version-1 receipt is at most
/// 31 bytes (1 + three 10-byte varints), i.e. 42 base64 characters.
const RECEIPT_CHARS_MAX: usize = 64;

/// A decoded receipt handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub queue: QueueId,
    pub seq: u64,
    /// Log index of the Receive that issued this receipt.
    pub lease: u64,
}

#[derive(Serialize, Deserialize)]
struct ReceiptWire {
    version: u8,
    queue: QueueId,
    seq: u64,
    lease: u64,
}

impl Receipt {
    pub fn encode(&self) -> String {
        let wire = ReceiptWire { version: RECEIPT_VERSION, queue: self.queue, seq: self.seq, lease: self.lease };
        // Serializing four integers into a growable Vec has no failure path in
        // postcard (errors come only from fixed-size buffers or unsupported types).
        let bytes = postcard::to_allocvec(&wire).expect("postcard encoding of integers cannot fail");
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a receipt handle; `None` for anything but a canonical version-1
    /// receipt (wrong length, bad base64, bad varints, trailing bytes, unknown
    /// version).
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() > RECEIPT_CHARS_MAX {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let (wire, rest) = postcard::take_from_bytes::<ReceiptWire>(&bytes).ok()?;
        if !rest.is_empty() || wire.version != RECEIPT_VERSION {
            return None;
        }
        let receipt = Self { queue: wire.queue, seq: wire.seq, lease: wire.lease };
        // Only the canonical spelling is accepted, so one delivery has exactly
        // one receipt string (no over-long varints or alternative base64).
        (receipt.encode() == text).then_some(receipt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for receipt in [
            Receipt { queue: 0, seq: 0, lease: 0 },
            Receipt { queue: 7, seq: 123_456, lease: 99 },
            Receipt { queue: u64::MAX, seq: u64::MAX, lease: u64::MAX },
        ] {
            let text = receipt.encode();
            assert!(text.len() <= RECEIPT_CHARS_MAX);
            assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "not URL-safe: {text}");
            assert_eq!(Receipt::decode(&text), Some(receipt));
        }
    }

    #[test]
    fn garbage_is_rejected() {
        for text in ["", "!!!!", "not a receipt", "AAAA", "====", "a b"] {
            assert_eq!(Receipt::decode(text), None, "{text:?}");
        }
        let long = "A".repeat(RECEIPT_CHARS_MAX + 1);
        assert_eq!(Receipt::decode(&long), None);
    }

    #[test]
    fn truncated_is_rejected() {
        let text = Receipt { queue: 300, seq: 70_000, lease: 1 << 40 }.encode();
        for len in 0..text.len() {
            assert_eq!(Receipt::decode(&text[..len]), None, "prefix of length {len}");
        }
    }

    #[test]
    fn trailing_bytes_and_wrong_version_are_rejected() {
        let wire = ReceiptWire { version: RECEIPT_VERSION, queue: 1, seq: 2, lease: 3 };
        let mut bytes = postcard::to_allocvec(&wire).expect("encode");
        bytes.push(0);
        assert_eq!(Receipt::decode(&URL_SAFE_NO_PAD.encode(&bytes)), None);

        let wire = ReceiptWire { version: 2, queue: 1, seq: 2, lease: 3 };
        let bytes = postcard::to_allocvec(&wire).expect("encode");
        assert_eq!(Receipt::decode(&URL_SAFE_NO_PAD.encode(&bytes)), None);
    }

    #[test]
    fn non_canonical_encodings_are_rejected() {
        // Over-long varint for queue 1: 0x81 0x00 instead of 0x01.
        let bytes = [RECEIPT_VERSION, 0x81, 0x00, 2, 3];
        assert_eq!(Receipt::decode(&URL_SAFE_NO_PAD.encode(bytes)), None);
        // Padded base64 of a valid receipt.
        let canonical = Receipt { queue: 1, seq: 2, lease: 3 }.encode();
        assert_eq!(Receipt::decode(&format!("{canonical}=")), None);
    }
}
