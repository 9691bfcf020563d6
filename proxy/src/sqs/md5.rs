//! The MD5 digests SQS returns so that SDKs can check what was stored and delivered:
//! `MD5OfMessageBody` / `MD5OfBody` over the body's UTF-8 bytes, and `MD5OfMessageAttributes`
//! over the message attributes in SQS's binary encoding:
//!
//! for each attribute, in ascending byte order of names: the name, the data type (each as a
//! 4-byte big-endian length and the UTF-8 bytes), one transport byte (1 for String and Number,
//! 2 for Binary), then the value as a 4-byte length and its bytes.

use md5::{Digest, Md5};
use strata_common::proto as pb;

const TRANSPORT_STRING: u8 = 1;
const TRANSPORT_BINARY: u8 = 2;

/// Lower-case hex MD5 of a message body.
pub fn of_body(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

fn update_with_length(md5: &mut Md5, bytes: &[u8]) {
    // Attribute names, types and values are bounded far below 4 GiB by the message size limit.
    md5.update(u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    md5.update(bytes);
}

/// Lower-case hex MD5 of message attributes; `None` when there are none (SQS then omits the
/// field).
pub fn of_attributes<'a>(
    attributes: impl IntoIterator<Item = (&'a String, &'a pb::MessageAttribute)>,
) -> Option<String> {
    let mut sorted: Vec<_> = attributes.into_iter().collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut md5 = Md5::new();
    for (name, attribute) in sorted {
        update_with_length(&mut md5, name.as_bytes());
        update_with_length(&mut md5, attribute.data_type.as_bytes());
        if attribute.data_type.starts_with("Binary") {
            md5.update([TRANSPORT_BINARY]);
            update_with_length(&mut md5, &attribute.binary_value);
        } else {
            md5.update([TRANSPORT_STRING]);
            update_with_length(&mut md5, attribute.string_value.as_bytes());
        }
    }
    Some(hex::encode(md5.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(data_type: &str, value: &str) -> pb::MessageAttribute {
        pb::MessageAttribute { data_type: data_type.into(), string_value: value.into(), binary_value: Vec::new() }
    }

    #[test]
    fn body_digest_is_hex_md5() {
        assert_eq!(of_body(b"hello"), "5d41402abc4b2a76b9719d911017c592");
    }

    // Expected digests computed independently with Python's hashlib over the documented
    // encoding (see the module comment); the differential test against moto compares real ones.
    #[test]
    fn attribute_digest_follows_the_sqs_encoding() {
        let attributes = [
            (
                "b".to_string(),
                pb::MessageAttribute {
                    data_type: "Binary".into(),
                    string_value: String::new(),
                    binary_value: vec![0, 1, 2],
                },
            ),
            ("a".to_string(), string("String", "x")),
            ("n".to_string(), string("Number.int", "42")),
        ];
        let digest = of_attributes(attributes.iter().map(|(k, v)| (k, v)));
        assert_eq!(digest.as_deref(), Some(EXPECTED_A_B_N));
        assert_eq!(of_attributes(std::iter::empty()), None);
    }

    const EXPECTED_A_B_N: &str = "8b69d5c07de5ef004dc151724bb3d256";
}
