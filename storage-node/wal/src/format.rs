//! On-disk format of the WAL: segment files, record frames and checked metadata files.
//!
//! This module owns every byte-layout constant and the pure encode/decode functions; nothing
//! here does I/O. Any change to the layout must bump [`RECORD_FORMAT_VERSION`] (records),
//! [`SEGMENT_MAGIC`] (segment header) or [`CHECKED_FILE_VERSION`] (metadata files), and will
//! show up in the exact-bytes snapshot tests below. Every version ever written stays readable.
//!
//! # Payload versions
//!
//! Record frames and checked files of version 2 (written since on-disk formats carry versions,
//! see `docs/formats.md`) have the same layout as version 1; they differ in what the payload
//! holds: a version-2 payload starts with its own format version byte, chosen by its writer and
//! never 0. Version-1 payloads were written before that rule and carry no version; readers get
//! them with [`LEGACY_PAYLOAD_VERSION`] (0) put in front ([`versioned_payload`]), so every
//! payload handed out starts with its format version.
//!
//! # Segment file
//!
//! A WAL directory holds segment files named `{first_index:020}.wal` (zero-padded decimal,
//! so lexical order is index order). Each file is a 20-byte segment header followed by zero
//! or more record frames, back to back, with no padding and no trailer:
//!
//! ```text
//! offset  size  field
//! 0       8     magic            b"STRWAL01" (the trailing "01" is the segment format version)
//! 8       8     first_index      u64 LE: index of the first record in this file (= file name)
//! 16      4     header_crc       u32 LE: crc32c of bytes 0..16
//! ```
//!
//! # Record frame
//!
//! ```text
//! offset  size  field
//! 0       1     version          u8, = RECORD_FORMAT_VERSION (2; 1 is read too)
//! 1       1     flags            u8, = 0 (reserved for future use; non-zero is rejected)
//! 2       2     reserved         u16 LE, = 0 (non-zero is rejected)
//! 4       4     payload_len      u32 LE, <= RECORD_PAYLOAD_BYTES_MAX
//! 8       8     index            u64 LE: the record's log index
//! 16      4     crc              u32 LE: crc32c of header bytes 0..16 followed by the payload
//! 20      n     payload          payload_len opaque bytes
//! ```
//!
//! Records inside a segment have strictly consecutive indexes starting at the header's
//! `first_index`; consecutive segments continue the sequence without gaps.
//!
//! # Checked metadata file
//!
//! Small files (Raft vote, committed index) written with
//! [`write_file_checked`](crate::write_file_checked):
//!
//! ```text
//! offset  size  field
//! 0       1     version          u8, = CHECKED_FILE_VERSION (2; 1 is read too)
//! 1       4     body_len         u32 LE, <= CHECKED_FILE_BODY_BYTES_MAX
//! 5       n     body             body_len bytes
//! 5+n     4     crc              u32 LE: crc32c of bytes 0..5+n
//! ```

use std::fmt;

/// Magic bytes opening every segment file; the last two characters are the segment format
/// version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"STRWAL01";

/// Size of the segment header: magic (8) + first_index (8) + crc (4).
pub const SEGMENT_HEADER_BYTES: usize = 20;

/// File-name extension of segment files (`{first_index:020}.wal`).
pub const SEGMENT_FILE_EXTENSION: &str = "wal";

/// Number of decimal digits of the first index in a segment file name (fits `u64::MAX`).
pub const SEGMENT_FILE_INDEX_DIGITS: usize = 20;

/// Version byte of every record frame written by this code.
pub const RECORD_FORMAT_VERSION: u8 = 2;

/// Version byte of record frames (and checked files) written before payloads carried their own
/// format version; still read.
pub const LEGACY_FRAME_VERSION: u8 = 1;

/// The format version a reader sees in front of a payload from a [`LEGACY_FRAME_VERSION`] frame
/// (it equals `strata_common::format::LEGACY_FORMAT_VERSION`).
pub const LEGACY_PAYLOAD_VERSION: u8 = 0;

/// Size of a record frame header: version (1) + flags (1) + reserved (2) + payload_len (4) +
/// index (8) + crc (4).
pub const RECORD_HEADER_BYTES: usize = 20;

/// Largest accepted record payload. A Raft entry holds a batch of up to 10 messages of up to
/// 1 MiB each plus their attributes and framing, so 16 MiB leaves ample headroom while still
/// bounding what a corrupt length field can make a reader allocate.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Version byte of checked metadata files written by this code.
pub const CHECKED_FILE_VERSION: u8 = 2;

/// Size of the checked-file prefix: version (1) + body_len (4).
pub const CHECKED_FILE_PREFIX_BYTES: usize = 5;

/// Size of the checked-file trailer: crc (4).
pub const CHECKED_FILE_TRAILER_BYTES: usize = 4;

/// Largest body of a checked metadata file. These files hold a vote or an index (tens of
/// bytes); 1 MiB bounds the read of a corrupt or foreign file.
pub const CHECKED_FILE_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Why a segment header, record frame or checked file failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than a complete header.
    TruncatedHeader {
        /// Bytes a header needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The segment header does not start with [`SEGMENT_MAGIC`].
    BadMagic,
    /// Unknown record or checked-file version byte.
    BadVersion {
        /// The version byte found.
        found: u8,
    },
    /// Non-zero record flags byte.
    NonZeroFlags {
        /// The flags byte found.
        found: u8,
    },
    /// Non-zero reserved record header field.
    NonZeroReserved {
        /// The reserved value found.
        found: u16,
    },
    /// The length field exceeds the format's maximum.
    PayloadTooLarge {
        /// Declared length in bytes.
        len_bytes: u64,
        /// Maximum length in bytes.
        max_bytes: u64,
    },
    /// The header is complete but the payload (or trailer) is cut short.
    TruncatedPayload {
        /// Bytes the frame needs in total.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The stored crc32c does not match the bytes.
    CrcMismatch {
        /// Checksum stored in the frame.
        stored: u32,
        /// Checksum computed over the bytes.
        computed: u32,
    },
    /// Bytes follow a frame that was expected to fill the input exactly.
    TrailingBytes {
        /// Number of extra bytes.
        extra: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedHeader { needed, available } => {
                write!(f, "truncated header: need {needed} bytes, have {available}")
            }
            Self::BadMagic => write!(f, "bad segment magic"),
            Self::BadVersion { found } => write!(f, "unsupported version byte {found}"),
            Self::NonZeroFlags { found } => write!(f, "non-zero flags byte {found:#04x}"),
            Self::NonZeroReserved { found } => write!(f, "non-zero reserved field {found:#06x}"),
            Self::PayloadTooLarge { len_bytes, max_bytes } => {
                write!(f, "length {len_bytes} bytes exceeds maximum {max_bytes}")
            }
            Self::TruncatedPayload { needed, available } => {
                write!(f, "truncated frame: need {needed} bytes, have {available}")
            }
            Self::CrcMismatch { stored, computed } => {
                write!(f, "crc mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
            Self::TrailingBytes { extra } => write!(f, "{extra} unexpected trailing bytes"),
        }
    }
}

impl std::error::Error for FrameError {}

/// File name of the segment whose first record has index `first_index`.
pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.{SEGMENT_FILE_EXTENSION}")
}

/// Parses a segment file name; `None` if `name` is not of the form `{first_index:020}.wal`.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_FILE_EXTENSION)?.strip_suffix('.')?;
    if digits.len() != SEGMENT_FILE_INDEX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes the header of a segment whose first record has index `first_index`.
pub fn encode_segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..16].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Decodes a segment header from the start of `bytes` (extra bytes are ignored) and returns
/// its `first_index`.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, FrameError> {
    let header = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or(FrameError::TruncatedHeader { needed: SEGMENT_HEADER_BYTES, available: bytes.len() })?;
    if header[0..8] != SEGMENT_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let stored = read_u32(header, 16);
    let computed = crc32c::crc32c(&header[0..16]);
    if stored != computed {
        return Err(FrameError::CrcMismatch { stored, computed });
    }
    Ok(read_u64(header, 8))
}

/// Total frame size (header + payload) of a record with `payload_len` payload bytes.
pub const fn record_frame_len(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len
}

/// Appends the frame of record `index` with `payload` to `buf`, in [`RECORD_FORMAT_VERSION`].
///
/// The caller must have checked `payload.len() <= RECORD_PAYLOAD_BYTES_MAX`; this function
/// panics otherwise (a programming error, never a data-dependent condition).
pub fn encode_record_into(buf: &mut Vec<u8>, index: u64, payload: &[u8]) {
    encode_record_version_into(buf, RECORD_FORMAT_VERSION, index, payload);
}

/// [`encode_record_into`] in a frame version of choice: [`LEGACY_FRAME_VERSION`] for a payload
/// without a format version of its own, which a process of a release from before payload
/// versions must be able to read (see `docs/formats.md`, rolling upgrades). Panics on a version
/// this code does not read.
pub fn encode_record_version_into(buf: &mut Vec<u8>, version: u8, index: u64, payload: &[u8]) {
    assert!(is_readable_frame_version(version), "record frame version {version} is unknown");
    assert!(
        payload.len() <= RECORD_PAYLOAD_BYTES_MAX,
        "record payload of {} bytes exceeds RECORD_PAYLOAD_BYTES_MAX",
        payload.len()
    );
    let payload_len = u32::try_from(payload.len()).expect("bounded by RECORD_PAYLOAD_BYTES_MAX");
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0] = version;
    // header[1] flags = 0, header[2..4] reserved = 0.
    header[4..8].copy_from_slice(&payload_len.to_le_bytes());
    header[8..16].copy_from_slice(&index.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[0..16]), payload);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    buf.reserve(record_frame_len(payload.len()));
    buf.extend_from_slice(&header);
    buf.extend_from_slice(payload);
}

/// Encodes one record frame. See [`encode_record_into`].
pub fn encode_record(index: u64, payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(record_frame_len(payload.len()));
    encode_record_into(&mut buf, index, payload);
    buf
}

/// A record frame decoded in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedRecord<'a> {
    /// The frame's version ([`RECORD_FORMAT_VERSION`] or [`LEGACY_FRAME_VERSION`]).
    pub version: u8,
    /// The record's log index.
    pub index: u64,
    /// The payload, borrowed from the input.
    pub payload: &'a [u8],
    /// Size of the whole frame (header + payload) in bytes.
    pub frame_len: usize,
}

/// Whether `version` is a record frame (or checked file) version this code reads.
pub fn is_readable_frame_version(version: u8) -> bool {
    version == RECORD_FORMAT_VERSION || version == LEGACY_FRAME_VERSION
}

/// The payload of a frame of `frame_version` as readers get it: starting with its format
/// version. A legacy frame's payload is copied behind [`LEGACY_PAYLOAD_VERSION`]; any other is
/// returned as it is.
pub fn versioned_payload(frame_version: u8, payload: bytes::Bytes) -> bytes::Bytes {
    if frame_version == LEGACY_FRAME_VERSION {
        let mut prefixed = Vec::with_capacity(payload.len() + 1);
        prefixed.push(LEGACY_PAYLOAD_VERSION);
        prefixed.extend_from_slice(&payload);
        bytes::Bytes::from(prefixed)
    } else {
        payload
    }
}

/// The frame a versioned payload (as [`versioned_payload`] hands them out) is stored in again, and
/// the bytes stored: a legacy payload goes back into a [`LEGACY_FRAME_VERSION`] frame without its
/// version, which releases from before payload versions read; any other as it is.
pub fn frame_for_payload(payload: &[u8]) -> (u8, &[u8]) {
    match payload.split_first() {
        Some((&LEGACY_PAYLOAD_VERSION, legacy)) => (LEGACY_FRAME_VERSION, legacy),
        _ => (RECORD_FORMAT_VERSION, payload),
    }
}

/// Validates only the fixed header fields of a record frame at the start of `bytes`
/// (everything except the crc), returning `(version, payload_len, index)`.
fn check_record_header(bytes: &[u8]) -> Result<(u8, usize, u64), FrameError> {
    let header = bytes
        .get(..RECORD_HEADER_BYTES)
        .ok_or(FrameError::TruncatedHeader { needed: RECORD_HEADER_BYTES, available: bytes.len() })?;
    if !is_readable_frame_version(header[0]) {
        return Err(FrameError::BadVersion { found: header[0] });
    }
    if header[1] != 0 {
        return Err(FrameError::NonZeroFlags { found: header[1] });
    }
    let reserved = u16::from_le_bytes([header[2], header[3]]);
    if reserved != 0 {
        return Err(FrameError::NonZeroReserved { found: reserved });
    }
    let payload_len = read_u32(header, 4);
    // u32 -> usize is lossless on every platform this code supports (64-bit).
    let payload_len_usize = payload_len as usize;
    if payload_len_usize > RECORD_PAYLOAD_BYTES_MAX {
        return Err(FrameError::PayloadTooLarge {
            len_bytes: u64::from(payload_len),
            max_bytes: RECORD_PAYLOAD_BYTES_MAX as u64,
        });
    }
    Ok((header[0], payload_len_usize, read_u64(header, 8)))
}

/// Decodes the record frame at the start of `bytes`, validating version, flags, reserved
/// field, length bound and crc. Bytes after the frame are ignored (see `frame_len`).
pub fn decode_record(bytes: &[u8]) -> Result<DecodedRecord<'_>, FrameError> {
    let (version, payload_len, index) = check_record_header(bytes)?;
    let frame_len = record_frame_len(payload_len);
    let frame =
        bytes.get(..frame_len).ok_or(FrameError::TruncatedPayload { needed: frame_len, available: bytes.len() })?;
    let payload = &frame[RECORD_HEADER_BYTES..];
    let stored = read_u32(frame, 16);
    let computed = crc32c::crc32c_append(crc32c::crc32c(&frame[0..16]), payload);
    if stored != computed {
        return Err(FrameError::CrcMismatch { stored, computed });
    }
    Ok(DecodedRecord { version, index, payload, frame_len })
}

/// Encodes a checked metadata file (see the module docs). The caller must have checked
/// `body.len() <= CHECKED_FILE_BODY_BYTES_MAX`; larger bodies panic.
pub fn encode_checked_file(body: &[u8]) -> Vec<u8> {
    assert!(body.len() <= CHECKED_FILE_BODY_BYTES_MAX, "checked file body exceeds CHECKED_FILE_BODY_BYTES_MAX");
    let body_len = u32::try_from(body.len()).expect("bounded by CHECKED_FILE_BODY_BYTES_MAX");
    let mut out = Vec::with_capacity(CHECKED_FILE_PREFIX_BYTES + body.len() + CHECKED_FILE_TRAILER_BYTES);
    out.push(CHECKED_FILE_VERSION);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a whole checked metadata file, returning its version and body.
pub fn decode_checked_file(bytes: &[u8]) -> Result<(u8, &[u8]), FrameError> {
    let prefix = bytes
        .get(..CHECKED_FILE_PREFIX_BYTES)
        .ok_or(FrameError::TruncatedHeader { needed: CHECKED_FILE_PREFIX_BYTES, available: bytes.len() })?;
    if !is_readable_frame_version(prefix[0]) {
        return Err(FrameError::BadVersion { found: prefix[0] });
    }
    let body_len = read_u32(prefix, 1);
    let body_len_usize = body_len as usize;
    if body_len_usize > CHECKED_FILE_BODY_BYTES_MAX {
        return Err(FrameError::PayloadTooLarge {
            len_bytes: u64::from(body_len),
            max_bytes: CHECKED_FILE_BODY_BYTES_MAX as u64,
        });
    }
    let body_end = CHECKED_FILE_PREFIX_BYTES + body_len_usize;
    let total = body_end + CHECKED_FILE_TRAILER_BYTES;
    if bytes.len() < total {
        return Err(FrameError::TruncatedPayload { needed: total, available: bytes.len() });
    }
    if bytes.len() > total {
        return Err(FrameError::TrailingBytes { extra: bytes.len() - total });
    }
    let stored = read_u32(bytes, body_end);
    let computed = crc32c::crc32c(&bytes[..body_end]);
    if stored != computed {
        return Err(FrameError::CrcMismatch { stored, computed });
    }
    Ok((prefix[0], &bytes[CHECKED_FILE_PREFIX_BYTES..body_end]))
}

/// Reads a little-endian u32 at `at`; the caller guarantees `bytes.len() >= at + 4`.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

/// Reads a little-endian u64 at `at`; the caller guarantees `bytes.len() >= at + 8`.
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    #[test]
    fn record_exact_bytes_snapshot() {
        // The crc32c implementation itself: the standard CRC-32C check value.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let encoded = encode_record(0x0102_0304_0506_0708, b"hello");
        let expected: Vec<u8> = vec![
            0x02, // version
            0x00, // flags
            0x00, 0x00, // reserved
            0x05, 0x00, 0x00, 0x00, // payload_len = 5
            0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, // index
            0xCD, 0xC6, 0x68, 0x94, // crc32c(bytes 0..16 ++ payload) = 0x9468C6CD, computed independently
            b'h', b'e', b'l', b'l', b'o',
        ];
        assert_eq!(encoded, expected);
        let decoded = decode_record(&encoded).unwrap();
        assert_eq!(decoded.version, RECORD_FORMAT_VERSION);
        assert_eq!(versioned_payload(decoded.version, Bytes::copy_from_slice(decoded.payload)), &b"hello"[..]);
    }

    /// A frame written before payloads carried versions (frame version 1) still decodes, and its
    /// payload is handed out behind the legacy version 0.
    #[test]
    fn legacy_record_frame_still_decodes() {
        let legacy: Vec<u8> = vec![
            0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0xFA, 0x40,
            0x76, 0x83, b'h', b'e', b'l', b'l', b'o',
        ];
        let decoded = decode_record(&legacy).unwrap();
        assert_eq!(
            (decoded.version, decoded.index, decoded.payload),
            (LEGACY_FRAME_VERSION, 0x0102_0304_0506_0708, &b"hello"[..])
        );
        assert_eq!(versioned_payload(decoded.version, Bytes::copy_from_slice(decoded.payload)), &b"\0hello"[..]);
        let mut unknown = legacy.clone();
        unknown[0] = 3;
        assert_eq!(decode_record(&unknown), Err(FrameError::BadVersion { found: 3 }));
    }

    #[test]
    fn segment_header_exact_bytes_snapshot() {
        let header = encode_segment_header(42);
        let mut expected = b"STRWAL01".to_vec();
        expected.extend_from_slice(&[42, 0, 0, 0, 0, 0, 0, 0]);
        // crc32c(bytes 0..16) = 0xA4866E4A (computed independently), LE.
        expected.extend_from_slice(&[0x4A, 0x6E, 0x86, 0xA4]);
        assert_eq!(header.to_vec(), expected);
        assert_eq!(decode_segment_header(&header), Ok(42));
    }

    #[test]
    fn every_single_byte_change_of_a_record_is_detected() {
        let encoded = encode_record(7, b"some payload bytes");
        for at in 0..encoded.len() {
            for mask in [0x01u8, 0x80, 0xFF, 0x5A] {
                let mut corrupted = encoded.clone();
                corrupted[at] ^= mask;
                assert!(decode_record(&corrupted).is_err(), "change of byte {at} with mask {mask:#04x} not detected");
            }
        }
    }

    #[test]
    fn every_single_byte_change_of_a_segment_header_is_detected() {
        let header = encode_segment_header(123_456);
        for at in 0..header.len() {
            let mut corrupted = header;
            corrupted[at] ^= 0x01;
            assert!(decode_segment_header(&corrupted).is_err(), "byte {at}");
        }
    }

    #[test]
    fn truncated_record_is_reported_as_truncated() {
        let encoded = encode_record(1, b"abcdef");
        for len in 0..encoded.len() {
            let err = decode_record(&encoded[..len]).unwrap_err();
            if len < RECORD_HEADER_BYTES {
                assert!(matches!(err, FrameError::TruncatedHeader { .. }), "{len}");
            } else {
                assert!(matches!(err, FrameError::TruncatedPayload { .. }), "{len}");
            }
        }
    }

    #[test]
    fn oversized_length_field_is_rejected_before_reading_payload() {
        let mut encoded = encode_record(1, b"");
        let too_large = u32::try_from(RECORD_PAYLOAD_BYTES_MAX + 1).unwrap();
        encoded[4..8].copy_from_slice(&too_large.to_le_bytes());
        assert!(matches!(decode_record(&encoded), Err(FrameError::PayloadTooLarge { .. })));
    }

    #[test]
    fn segment_file_names_round_trip_and_reject_foreign_names() {
        assert_eq!(segment_file_name(5), "00000000000000000005.wal");
        assert_eq!(parse_segment_file_name("00000000000000000005.wal"), Some(5));
        assert_eq!(parse_segment_file_name(&segment_file_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "5.wal",
            "0000000000000000005.wal",
            "00000000000000000005.wa",
            "00000000000000000005.wal.tmp",
            "0000000000000000000x.wal",
            "99999999999999999999.wal", // > u64::MAX
            "LOCK",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn checked_file_detects_truncation_and_flips() {
        let encoded = encode_checked_file(b"vote:term=3");
        assert_eq!(decode_checked_file(&encoded), Ok((CHECKED_FILE_VERSION, &b"vote:term=3"[..])));
        for len in 0..encoded.len() {
            assert!(decode_checked_file(&encoded[..len]).is_err(), "{len}");
        }
        for at in 0..encoded.len() {
            let mut corrupted = encoded.clone();
            corrupted[at] ^= 0x10;
            assert!(decode_checked_file(&corrupted).is_err(), "{at}");
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert_eq!(decode_checked_file(&longer), Err(FrameError::TrailingBytes { extra: 1 }));
    }

    proptest! {
        #[test]
        fn record_round_trip(index in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..4096), trailing in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut encoded = encode_record(index, &payload);
            prop_assert_eq!(encoded.len(), record_frame_len(payload.len()));
            encoded.extend_from_slice(&trailing);
            let decoded = decode_record(&encoded).unwrap();
            prop_assert_eq!(decoded.index, index);
            prop_assert_eq!(decoded.payload, &payload[..]);
            prop_assert_eq!(decoded.frame_len, record_frame_len(payload.len()));
        }

        #[test]
        fn segment_header_round_trip(first_index in any::<u64>()) {
            prop_assert_eq!(decode_segment_header(&encode_segment_header(first_index)), Ok(first_index));
        }

        #[test]
        fn checked_file_round_trip(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let encoded = encode_checked_file(&body);
            prop_assert_eq!(decode_checked_file(&encoded), Ok((CHECKED_FILE_VERSION, &body[..])));
        }
    }
}
