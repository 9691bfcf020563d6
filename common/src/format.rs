//! The rule every persisted byte follows (see `docs/formats.md`).
//!
//! Whatever Strata writes to disk or to the bucket is a [`Persisted`] value: a type owned by the
//! component that writes it (never a gRPC wire struct or another crate's type), encoded as one
//! format-version byte followed by a body whose layout that version fixes forever. Decoding
//! dispatches on the version, and every version ever released stays decodable.
//!
//! Version [`LEGACY_FORMAT_VERSION`] (0) names what was written before versions existed. Those
//! bytes carry no version of their own; their container tells them apart (a WAL record frame of
//! version 1, a checked file of version 1, a snapshot file of version 1) and hands them to
//! [`Persisted::decode_body`] with version 0. Every body of version 0 has the layout of version 1.
//!
//! Bodies are postcard (compact, not self-describing): a version's layout is the postcard
//! encoding of a frozen set of Rust types. Changing any of them, even adding a field, is a new
//! version; the golden fixtures under `tests/fixtures/formats/` fail when an encoding changes
//! without one.

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format version of bytes written before formats were versioned.
pub const LEGACY_FORMAT_VERSION: u8 = 0;

/// A format generation names the format version of every persisted type that a cluster may
/// write: generation 0 is what releases from before format versions wrote, generation 1 the
/// first versioned formats, generation 2 adds request digests to shard commands and states,
/// generation 3 SigV4 secrets sealed under a KEK in the metadata catalog, generation 4 the
/// stored size of each message in shard states and the stored-bytes limits in the metadata
/// catalog, generation 5 shard commands that take back undelivered receives, generation 6
/// shard log entries that carry the calls of many clients, generation 7 shard commands that
/// keep who made a call and the trace headers of what it sent, generation 8 the metadata
/// catalog's journal of operations storage nodes carry out, generation 9 queues moved between
/// shards (shard commands and states that fence, export and adopt a queue; metadata's queue
/// epochs and moves), generation 10 messages handed between shards (shard commands and states
/// of the hand-off outbox, for dead-letter queues and move tasks on another shard). A process
/// writes the generation
/// its cluster has reached (recorded in metadata, raised once every process can read it) and
/// reads every generation up to its own newest (see `docs/formats.md`, rolling upgrades).
pub type FormatGeneration = u32;

/// The generation of everything written before formats were versioned.
pub const LEGACY_GENERATION: FormatGeneration = 0;
/// The newest generation this release reads and writes.
pub const NEWEST_GENERATION: FormatGeneration = 10;

/// A value with a versioned persisted form.
pub trait Persisted: Sized {
    /// The version written in each format generation, generation 0 first: `VERSIONS[g]` for a
    /// cluster at generation `g` (the last one for any later generation). Never decreasing; its
    /// last element is the newest version.
    const VERSIONS: &'static [u8];

    /// The newest version this release writes and reads.
    const FORMAT_VERSION: u8 = Self::VERSIONS[Self::VERSIONS.len() - 1];

    /// The version a cluster at `generation` writes, before [`Persisted::version_needed`].
    fn version_for(generation: FormatGeneration) -> u8 {
        let last = Self::VERSIONS.len() - 1;
        Self::VERSIONS[usize::try_from(generation).unwrap_or(usize::MAX).min(last)]
    }

    /// The oldest version that can hold this value (a value made of something a newer version
    /// added). Such a value is proposed only once every process reads that version.
    fn version_needed(&self) -> u8 {
        LEGACY_FORMAT_VERSION
    }

    /// The version to write this value in, in a cluster at `generation`.
    fn version_to_write(&self, generation: FormatGeneration) -> u8 {
        Self::version_for(generation).max(self.version_needed())
    }

    /// Appends the body of `self` in `version` (without the version byte). Errors: `InvalidInput`
    /// for a version that cannot hold this value.
    fn encode_body(&self, version: u8, out: &mut Vec<u8>) -> io::Result<()>;

    /// Decodes a body written in `version` ([`LEGACY_FORMAT_VERSION`] for bytes from before
    /// versions). Errors: `InvalidData` for an unknown version or a damaged body.
    fn decode_body(version: u8, body: &[u8]) -> io::Result<Self>;

    /// Decodes a version byte followed by a body (in any released version).
    fn decode_versioned(bytes: &[u8]) -> io::Result<Self> {
        let (&version, body) = bytes.split_first().ok_or_else(|| invalid_data("empty persisted value"))?;
        Self::decode_body(version, body)
    }
}

/// Which format generation this process writes, and the newest it reads. Shared by everything
/// that persists in one process; cheap to clone.
#[derive(Debug, Clone)]
pub struct FormatGate {
    inner: std::sync::Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    readable_max: FormatGeneration,
    writing: std::sync::atomic::AtomicU32,
}

impl FormatGate {
    /// A process that reads generations up to `readable_max` (at most [`NEWEST_GENERATION`]; a
    /// lower cap makes it behave as a release of that generation would) and writes
    /// [`LEGACY_GENERATION`] until its cluster's generation is known.
    pub fn new(readable_max: FormatGeneration) -> Self {
        let readable_max = readable_max.min(NEWEST_GENERATION);
        Self { inner: std::sync::Arc::new(GateInner { readable_max, writing: LEGACY_GENERATION.into() }) }
    }

    /// A process alone with its data (tests, tools): reads and writes the newest generation.
    pub fn newest() -> Self {
        let gate = Self::new(NEWEST_GENERATION);
        gate.raise(NEWEST_GENERATION);
        gate
    }

    /// The newest generation this process reads (and reports to its cluster).
    pub fn readable_max(&self) -> FormatGeneration {
        self.inner.readable_max
    }

    /// The generation this process writes now.
    pub fn writing(&self) -> FormatGeneration {
        self.inner.writing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Follows the cluster's generation: writes `generation` from now on (never less than before,
    /// never more than it reads).
    pub fn raise(&self, generation: FormatGeneration) {
        let generation = generation.min(self.inner.readable_max);
        self.inner.writing.fetch_max(generation, std::sync::atomic::Ordering::AcqRel);
    }

    /// Refuses a version that this process's cap says it cannot read (`version > newest` for
    /// the generation it reads): a capped process behaves as the older release would.
    pub fn check_readable<T: Persisted>(&self, what: &str, version: u8) -> io::Result<()> {
        if version > T::version_for(self.inner.readable_max) {
            return Err(unknown_version(what, version));
        }
        Ok(())
    }
}

/// Appends the postcard encoding of `value` to `out`.
pub fn postcard_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> io::Result<()> {
    let encoded = postcard::to_extend(value, std::mem::take(out)).map_err(io::Error::other)?;
    *out = encoded;
    Ok(())
}

/// Decodes the `T` at the start of `rest` and moves `rest` past it: for the parts a version
/// appends after a value's serde layout, read one after another, the last with
/// [`postcard_exact`].
pub fn postcard_take<T: DeserializeOwned>(rest: &mut &[u8]) -> io::Result<T> {
    let (value, after) = postcard::take_from_bytes(rest).map_err(|e| invalid_data(e.to_string()))?;
    *rest = after;
    Ok(value)
}

/// Decodes a postcard body that must be exactly one `T` (trailing bytes are damage).
pub fn postcard_exact<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    let mut rest = body;
    let value = postcard_take(&mut rest)?;
    postcard_done(rest)?;
    Ok(value)
}

/// Checks that nothing follows the last value read ([`postcard_take`]): trailing bytes are damage.
pub fn postcard_done(rest: &[u8]) -> io::Result<()> {
    if !rest.is_empty() {
        return Err(invalid_data(format!("{} bytes after the value", rest.len())));
    }
    Ok(())
}

/// Decodes a body of `version` as the one postcard layout shared by `layout_versions` (the
/// legacy version and version 1, say, or versions that differ only in what they may hold);
/// any other version is unknown.
pub fn postcard_of_versions<T: DeserializeOwned>(
    what: &str,
    version: u8,
    layout_versions: &[u8],
    body: &[u8],
) -> io::Result<T> {
    if !layout_versions.contains(&version) {
        return Err(unknown_version(what, version));
    }
    postcard_exact(body)
}

/// The error of a version this release does not know.
pub fn unknown_version(what: &str, version: u8) -> io::Error {
    invalid_data(format!("{what} format version {version} is unknown to this release (written by a newer one?)"))
}

/// The error of a value that the version asked for cannot hold.
pub fn cannot_hold(what: &str, version: u8) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what} format version {version} cannot hold this value"))
}

/// An `InvalidData` error.
pub fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Implements `From` both ways between two structs with the same fields, typically a persisted
/// type and its gRPC twin. Every field is named in both directions, so a field added to either
/// side and not to the other fails to compile instead of being dropped.
#[macro_export]
macro_rules! same_fields {
    ($a:path, $b:path, { $($field:ident),* $(,)? }) => {
        impl From<$a> for $b {
            fn from(value: $a) -> Self {
                let $a { $($field),* } = value;
                $b { $($field),* }
            }
        }
        impl From<$b> for $a {
            fn from(value: $b) -> Self {
                let $b { $($field),* } = value;
                $a { $($field),* }
            }
        }
    };
}

/// A plain string (the command type of tests of generic Raft code): version 1 is its postcard
/// encoding.
impl Persisted for String {
    const VERSIONS: &'static [u8] = &[LEGACY_FORMAT_VERSION, 1];

    fn encode_body(&self, _version: u8, out: &mut Vec<u8>) -> io::Result<()> {
        postcard_into(self, out)
    }

    fn decode_body(version: u8, body: &[u8]) -> io::Result<Self> {
        postcard_of_versions("string", version, Self::VERSIONS, body)
    }
}

/// Golden fixtures: committed encodings of persisted values, which tests compare with what this
/// release writes (test support; see `docs/formats.md`).
pub mod golden {
    use std::fmt::Debug;
    use std::path::Path;

    use super::{LEGACY_FORMAT_VERSION, Persisted};

    /// Set (to anything) to write fixtures that do not exist yet. An existing fixture is never
    /// rewritten: it stands for data a released version wrote.
    pub const BLESS_ENV: &str = "STRATA_BLESS_FORMATS";

    /// Compares `encoded` with the fixture `dir/file`, writing it first when it is missing and
    /// [`BLESS_ENV`] is set. Panics when they differ: the encoding changed without a new version.
    pub fn check_bytes(dir: &Path, file: &str, encoded: &[u8]) -> Vec<u8> {
        let path = dir.join(file);
        let stored = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os(BLESS_ENV).is_some() => {
                std::fs::create_dir_all(dir).expect("create the fixture directory");
                std::fs::write(&path, encoded).expect("write the fixture");
                encoded.to_vec()
            }
            Err(e) => panic!(
                "no golden fixture {} ({e}): run the test with {BLESS_ENV}=1 to write it, then commit it",
                path.display()
            ),
        };
        assert!(
            stored == encoded,
            "the encoding behind {} changed without a new format version: add a version (docs/formats.md); \
             never rewrite a fixture\n  fixture {stored:02x?}\n  now     {encoded:02x?}",
            path.display()
        );
        stored
    }

    /// Checks `value` against its fixtures `dir/{name}-v{version}.bin`, one per version this
    /// release writes (the version byte first; none for the legacy version 0, whose container
    /// tells it apart): this release encodes it to exactly those bytes and decodes them back to
    /// the same content (compared through `Debug`, which covers types without `PartialEq`). Every
    /// other fixture of the value that exists (a version no longer written) must still decode to
    /// the same content.
    pub fn check<T: Persisted + Debug>(dir: &Path, name: &str, value: &T) {
        let expected = format!("{value:?}");
        check_as(dir, name, value, |_| expected.clone());
    }

    /// [`check`] for a value that some versions hold only in part: the fixture of `version`
    /// must decode to content whose `Debug` is `expected(version)`.
    pub fn check_as<T: Persisted + Debug>(dir: &Path, name: &str, value: &T, expected: impl Fn(u8) -> String) {
        for version in 0..=T::FORMAT_VERSION {
            let file = format!("{name}-v{version}.bin");
            let written = T::VERSIONS.contains(&version) && version >= value.version_needed();
            let stored = if written {
                let mut encoded = if version == LEGACY_FORMAT_VERSION { Vec::new() } else { vec![version] };
                value.encode_body(version, &mut encoded).unwrap_or_else(|e| panic!("encode {file}: {e}"));
                check_bytes(dir, &file, &encoded)
            } else {
                match std::fs::read(dir.join(&file)) {
                    Ok(bytes) => bytes,
                    Err(_) => continue,
                }
            };
            let decoded = if version == LEGACY_FORMAT_VERSION {
                T::decode_body(LEGACY_FORMAT_VERSION, &stored)
            } else {
                T::decode_versioned(&stored)
            }
            .unwrap_or_else(|e| panic!("{file} does not decode: {e}"));
            assert_eq!(format!("{decoded:?}"), expected(version), "{file} decodes to other content");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Pair(u32, String);

    impl Persisted for Pair {
        const VERSIONS: &'static [u8] = &[LEGACY_FORMAT_VERSION, 1];

        fn encode_body(&self, _version: u8, out: &mut Vec<u8>) -> io::Result<()> {
            postcard_into(&(self.0, &self.1), out)
        }

        fn decode_body(version: u8, body: &[u8]) -> io::Result<Self> {
            postcard_of_versions::<(u32, String)>("pair", version, Self::VERSIONS, body).map(|(a, b)| Pair(a, b))
        }
    }

    #[test]
    fn versioned_round_trip_and_refusals() {
        let value = Pair(300, "x".into());
        let mut bytes = vec![Pair::FORMAT_VERSION];
        value.encode_body(Pair::FORMAT_VERSION, &mut bytes).unwrap();
        assert_eq!(bytes, [1, 0xac, 0x02, 1, b'x']);
        assert_eq!(Pair::decode_versioned(&bytes).unwrap(), value);
        assert_eq!(Pair::decode_body(LEGACY_FORMAT_VERSION, &bytes[1..]).unwrap(), value);
        assert!(Pair::decode_versioned(&[]).is_err());
        assert!(Pair::decode_versioned(&[2, 0, 0]).unwrap_err().to_string().contains("unknown"));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Pair::decode_versioned(&trailing).is_err());
    }
}
