//! The persisted forms of the Raft log's own data: log entries, the vote, log ids and
//! memberships (see `docs/formats.md`).
//!
//! openraft's types are not written as they are: their serde layout belongs to openraft and may
//! change with any upgrade of it. Each has a frozen mirror here (`*V1`) with the layout openraft
//! 0.10.0-alpha.37 gave them, which is also what was written before formats were versioned, so
//! bytes of [`LEGACY_FORMAT_VERSION`] decode with the same types.
//!
//! A log entry of version 1 is: the version byte, postcard of its [`LogIdV1`], the payload kind
//! (a postcard enum tag: 0 blank, 1 normal, 2 membership), then for a normal entry the
//! application's command as a [`Persisted`] value (its own version byte and body), for a
//! membership entry postcard of a [`MembershipV1`]. A legacy entry is the same without the two
//! version bytes, in a legacy WAL frame; a cluster writes legacy entries while its format
//! generation is 0, so that processes of releases from before versions read them.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use openraft::impls::leader_id_adv::LeaderId;
use openraft::impls::{BasicNode, Entry, EntryPayload, Vote};
use openraft::{LogId, Membership, RaftTypeConfig, StoredMembership};
use serde::{Deserialize, Serialize};
use strata_common::format::{
    FormatGate, FormatGeneration, LEGACY_FORMAT_VERSION, LEGACY_GENERATION, Persisted, invalid_data, postcard_exact,
    postcard_into, unknown_version,
};

/// The version of entries, votes, log ids and memberships this release writes.
pub const RAFT_FORMAT_VERSION: u8 = 1;

/// The Raft types of every Strata group (shards and the metadata quorum), whose persisted forms
/// this module owns. Blanket-implemented: any `declare_raft_types!` config with these types is
/// one.
pub trait PersistedRaftTypes:
    RaftTypeConfig<
        D: Persisted,
        NodeId = u64,
        Node = BasicNode,
        Term = u64,
        LeaderId = LeaderId<u64, u64>,
        Vote = Vote<LeaderId<u64, u64>>,
        Entry = Entry<LeaderId<u64, u64>, EntryPayload<<Self as RaftTypeConfig>::D, u64, BasicNode>>,
    >
{
}

impl<C> PersistedRaftTypes for C where
    C: RaftTypeConfig<
            D: Persisted,
            NodeId = u64,
            Node = BasicNode,
            Term = u64,
            LeaderId = LeaderId<u64, u64>,
            Vote = Vote<LeaderId<u64, u64>>,
            Entry = Entry<LeaderId<u64, u64>, EntryPayload<<C as RaftTypeConfig>::D, u64, BasicNode>>,
        >
{
}

/// A leader: the term and the node elected in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderIdV1 {
    pub term: u64,
    pub node_id: u64,
}

/// A log entry's id: who proposed it and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogIdV1 {
    pub leader_id: LeaderIdV1,
    pub index: u64,
}

/// A vote: the leader voted for, and whether a quorum granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteV1 {
    pub leader_id: LeaderIdV1,
    pub committed: bool,
}

/// A node's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeV1 {
    pub addr: String,
}

/// Voter sets (two during a joint change) and every member's address (learners too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipV1 {
    pub configs: Vec<BTreeSet<u64>>,
    pub nodes: BTreeMap<u64, NodeV1>,
}

/// A membership and the entry that carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMembershipV1 {
    pub log_id: Option<LogIdV1>,
    pub membership: MembershipV1,
}

/// The payload kinds of an entry (the postcard enum tags openraft's `EntryPayload` had).
const KIND_BLANK: u8 = 0;
const KIND_NORMAL: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;

impl From<&LogId<LeaderId<u64, u64>>> for LogIdV1 {
    fn from(id: &LogId<LeaderId<u64, u64>>) -> Self {
        Self { leader_id: LeaderIdV1 { term: id.leader_id.term, node_id: id.leader_id.node_id }, index: id.index }
    }
}

impl From<LogIdV1> for LogId<LeaderId<u64, u64>> {
    fn from(id: LogIdV1) -> Self {
        LogId::new(LeaderId { term: id.leader_id.term, node_id: id.leader_id.node_id }, id.index)
    }
}

impl From<&Vote<LeaderId<u64, u64>>> for VoteV1 {
    fn from(vote: &Vote<LeaderId<u64, u64>>) -> Self {
        Self {
            leader_id: LeaderIdV1 { term: vote.leader_id.term, node_id: vote.leader_id.node_id },
            committed: vote.committed,
        }
    }
}

impl From<VoteV1> for Vote<LeaderId<u64, u64>> {
    fn from(vote: VoteV1) -> Self {
        Vote {
            leader_id: LeaderId { term: vote.leader_id.term, node_id: vote.leader_id.node_id },
            committed: vote.committed,
        }
    }
}

impl From<&Membership<u64, BasicNode>> for MembershipV1 {
    fn from(membership: &Membership<u64, BasicNode>) -> Self {
        Self {
            configs: membership.get_joint_config().clone(),
            nodes: membership.nodes().map(|(id, node)| (*id, NodeV1 { addr: node.addr.clone() })).collect(),
        }
    }
}

impl TryFrom<MembershipV1> for Membership<u64, BasicNode> {
    type Error = io::Error;

    fn try_from(membership: MembershipV1) -> io::Result<Self> {
        let nodes: BTreeMap<u64, BasicNode> =
            membership.nodes.into_iter().map(|(id, node)| (id, BasicNode { addr: node.addr })).collect();
        Membership::new(membership.configs, nodes).map_err(|e| invalid_data(format!("stored membership: {e}")))
    }
}

impl From<&StoredMembership<LeaderId<u64, u64>, u64, BasicNode>> for StoredMembershipV1 {
    fn from(stored: &StoredMembership<LeaderId<u64, u64>, u64, BasicNode>) -> Self {
        Self { log_id: stored.log_id().as_ref().map(LogIdV1::from), membership: stored.membership().into() }
    }
}

impl TryFrom<StoredMembershipV1> for StoredMembership<LeaderId<u64, u64>, u64, BasicNode> {
    type Error = io::Error;

    fn try_from(stored: StoredMembershipV1) -> io::Result<Self> {
        Ok(StoredMembership::new(stored.log_id.map(LogId::from), stored.membership.try_into()?))
    }
}

/// Whether a batch of entries is written in the legacy layout (and legacy WAL frames): in a
/// cluster still at [`LEGACY_GENERATION`], unless an entry holds something only a newer version
/// can (proposed only once every voter reads it).
pub fn writes_legacy<C: PersistedRaftTypes>(entries: &[C::Entry], generation: FormatGeneration) -> bool {
    generation == LEGACY_GENERATION
        && entries.iter().all(|entry| match &entry.payload {
            EntryPayload::Normal(command) => command.version_to_write(generation) == LEGACY_FORMAT_VERSION,
            EntryPayload::Blank | EntryPayload::Membership(_) => true,
        })
}

/// Encodes a log entry (see the module doc): in the legacy layout, or in [`RAFT_FORMAT_VERSION`]
/// with the command in the version a cluster at `generation` writes.
pub fn encode_entry<C: PersistedRaftTypes>(
    entry: &C::Entry,
    legacy: bool,
    generation: FormatGeneration,
) -> io::Result<Vec<u8>> {
    let mut out = if legacy { Vec::new() } else { vec![RAFT_FORMAT_VERSION] };
    postcard_into(&LogIdV1::from(&entry.log_id), &mut out)?;
    match &entry.payload {
        EntryPayload::Blank => out.push(KIND_BLANK),
        EntryPayload::Normal(command) => {
            out.push(KIND_NORMAL);
            let version = if legacy { LEGACY_FORMAT_VERSION } else { command.version_to_write(generation) };
            if !legacy {
                out.push(version);
            }
            command.encode_body(version, &mut out)?;
        }
        EntryPayload::Membership(membership) => {
            out.push(KIND_MEMBERSHIP);
            postcard_into(&MembershipV1::from(membership), &mut out)?;
        }
    }
    Ok(out)
}

/// Decodes a log entry from a WAL payload (which starts with its format version), refusing
/// versions newer than `gate` reads.
pub fn decode_entry<C: PersistedRaftTypes>(payload: &[u8], gate: &FormatGate) -> io::Result<C::Entry> {
    let (&version, rest) = payload.split_first().ok_or_else(|| invalid_data("empty log entry"))?;
    let readable = if gate.readable_max() == LEGACY_GENERATION { LEGACY_FORMAT_VERSION } else { RAFT_FORMAT_VERSION };
    if version > readable {
        return Err(unknown_version("log entry", version));
    }
    let (log_id, rest): (LogIdV1, &[u8]) =
        postcard::take_from_bytes(rest).map_err(|e| invalid_data(format!("log entry id: {e}")))?;
    let (&kind, rest) = rest.split_first().ok_or_else(|| invalid_data("log entry without a payload"))?;
    let payload = match kind {
        KIND_BLANK if rest.is_empty() => EntryPayload::Blank,
        KIND_NORMAL if version == LEGACY_FORMAT_VERSION => {
            EntryPayload::Normal(C::D::decode_body(LEGACY_FORMAT_VERSION, rest)?)
        }
        KIND_NORMAL => {
            let (&command_version, body) =
                rest.split_first().ok_or_else(|| invalid_data("log entry without a command"))?;
            gate.check_readable::<C::D>("command", command_version)?;
            EntryPayload::Normal(C::D::decode_body(command_version, body)?)
        }
        KIND_MEMBERSHIP => EntryPayload::Membership(postcard_exact::<MembershipV1>(rest)?.try_into()?),
        _ => return Err(invalid_data(format!("log entry payload kind {kind} (or trailing bytes)"))),
    };
    Ok(Entry { log_id: log_id.into(), payload })
}

/// A small persisted Raft fact (vote, log id) with its version byte.
pub fn encode_fact<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let mut out = vec![RAFT_FORMAT_VERSION];
    postcard_into(value, &mut out)?;
    Ok(out)
}

/// Decodes what [`encode_fact`] wrote, or a legacy fact (version 0 in front).
pub fn decode_fact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    match bytes.split_first() {
        Some((&(LEGACY_FORMAT_VERSION | RAFT_FORMAT_VERSION), body)) => postcard_exact(body),
        Some((&version, _)) => Err(unknown_version("Raft fact", version)),
        None => Err(invalid_data("empty Raft fact")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use strata_common::format::{NEWEST_GENERATION, golden};

    use super::*;

    openraft::declare_raft_types!(
        pub(crate) Config:
            D = String,
            R = (),
            NodeId = u64,
            Node = BasicNode,
    );

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/formats/raft")
    }

    fn log_id(term: u64, node_id: u64, index: u64) -> LogId<LeaderId<u64, u64>> {
        LogId::new(LeaderId { term, node_id }, index)
    }

    fn membership() -> Membership<u64, BasicNode> {
        let nodes = (1..=4).map(|id| (id, BasicNode { addr: format!("10.0.0.{id}:9500") })).collect::<BTreeMap<_, _>>();
        Membership::new(vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([2, 3, 4])], nodes).expect("membership")
    }

    fn entries() -> Vec<(&'static str, <Config as RaftTypeConfig>::Entry)> {
        vec![
            ("entry-blank", Entry { log_id: log_id(3, 2, 17), payload: EntryPayload::Blank }),
            ("entry-normal", Entry { log_id: log_id(3, 2, 18), payload: EntryPayload::Normal("hello".to_string()) }),
            ("entry-membership", Entry { log_id: log_id(4, 1, 300), payload: EntryPayload::Membership(membership()) }),
        ]
    }

    /// Every entry kind: this release writes the committed bytes and reads them back, and reads
    /// the legacy bytes (openraft 0.10.0-alpha.37's serde layout, what was written before
    /// versions) as the same entry.
    #[test]
    fn entries_match_their_golden_fixtures() {
        for (name, entry) in entries() {
            let gate = FormatGate::newest();
            let encoded = encode_entry::<Config>(&entry, false, NEWEST_GENERATION).expect("encode");
            let stored = golden::check_bytes(&fixtures(), &format!("{name}-v1.bin"), &encoded);
            assert_eq!(decode_entry::<Config>(&stored, &gate).expect("decode"), entry, "{name}");
            let capped = FormatGate::new(LEGACY_GENERATION);
            assert!(decode_entry::<Config>(&stored, &capped).is_err(), "{name}: a legacy reader refuses version 1");

            // The legacy layout is what openraft's serde wrote, and what a cluster still at
            // generation 0 writes.
            let legacy = postcard::to_allocvec(&entry).expect("legacy encoding");
            assert!(writes_legacy::<Config>(std::slice::from_ref(&entry), LEGACY_GENERATION));
            assert_eq!(encode_entry::<Config>(&entry, true, LEGACY_GENERATION).expect("encode legacy"), legacy);
            let stored = golden::check_bytes(&fixtures(), &format!("{name}-v0.bin"), &legacy);
            let mut versioned = vec![LEGACY_FORMAT_VERSION];
            versioned.extend_from_slice(&stored);
            for gate in [&gate, &capped] {
                assert_eq!(decode_entry::<Config>(&versioned, gate).expect("decode legacy"), entry, "{name} (legacy)");
            }
        }
    }

    #[test]
    fn facts_match_their_golden_fixtures() {
        let vote = Vote { leader_id: LeaderId { term: 5, node_id: 2 }, committed: true };
        let stored =
            golden::check_bytes(&fixtures(), "vote-v1.bin", &encode_fact(&VoteV1::from(&vote)).expect("encode"));
        assert_eq!(Vote::from(decode_fact::<VoteV1>(&stored).expect("decode")), vote);
        let legacy = golden::check_bytes(&fixtures(), "vote-v0.bin", &postcard::to_allocvec(&vote).expect("legacy"));
        assert_eq!(Vote::from(decode_fact::<VoteV1>(&[&[0u8][..], &legacy].concat()).expect("legacy")), vote);

        let id = log_id(7, 3, 4096);
        let stored =
            golden::check_bytes(&fixtures(), "log-id-v1.bin", &encode_fact(&LogIdV1::from(&id)).expect("encode"));
        assert_eq!(LogId::from(decode_fact::<LogIdV1>(&stored).expect("decode")), id);
        let legacy = golden::check_bytes(&fixtures(), "log-id-v0.bin", &postcard::to_allocvec(&id).expect("legacy"));
        assert_eq!(LogId::from(decode_fact::<LogIdV1>(&[&[0u8][..], &legacy].concat()).expect("legacy")), id);

        let stored_membership = StoredMembership::new(Some(log_id(4, 1, 300)), membership());
        let v1 = StoredMembershipV1::from(&stored_membership);
        let legacy = postcard::to_allocvec(&stored_membership).expect("legacy");
        assert_eq!(postcard_exact::<StoredMembershipV1>(&legacy).expect("mirror reads openraft's layout"), v1);
    }

    #[test]
    fn unknown_versions_and_damage_are_refused() {
        let (_, entry) = entries().remove(1);
        let gate = FormatGate::newest();
        let mut encoded = encode_entry::<Config>(&entry, false, NEWEST_GENERATION).expect("encode");
        encoded[0] = 9;
        assert!(decode_entry::<Config>(&encoded, &gate).unwrap_err().to_string().contains("unknown"));
        let mut encoded = encode_entry::<Config>(&entry, false, NEWEST_GENERATION).expect("encode");
        encoded.push(0);
        assert!(decode_entry::<Config>(&encoded, &gate).is_err(), "trailing bytes");
        assert!(decode_entry::<Config>(&[], &gate).is_err());
    }
}
