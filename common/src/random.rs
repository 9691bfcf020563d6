//! The randomness seam. Ids (message ids, receipt nonces, request ids) and random choices (which
//! peer to try first, jitter) come from a [`Random`]: the operating system's generator in
//! production, a generator seeded by the test in tests and simulations, so a run can be replayed
//! from its seed. Clippy's `disallowed-methods` bans the direct calls (`Uuid::new_v4`,
//! `rand::rng`, `rand::random`) everywhere else.
//!
//! Key material is not an id: [`secret_bytes`] and [`secret_string`] always draw from the
//! operating system's generator, so no seed ever reaches a secret.

use std::sync::{Arc, Mutex, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use uuid::Uuid;

/// Where ids and random choices come from. Cloning shares the source.
#[derive(Debug, Clone, Default)]
pub struct Random {
    seeded: Option<Arc<Mutex<StdRng>>>,
}

impl Random {
    /// The operating system's generator (through the thread-local CSPRNG).
    pub fn os() -> Self {
        Self { seeded: None }
    }

    /// A generator that yields the same sequence for the same seed.
    pub fn seeded(seed: u64) -> Self {
        Self { seeded: Some(Arc::new(Mutex::new(StdRng::seed_from_u64(seed)))) }
    }

    fn with<T>(&self, draw: impl FnOnce(&mut dyn RngCore) -> T) -> T {
        match &self.seeded {
            Some(rng) => draw(&mut *rng.lock().unwrap_or_else(PoisonError::into_inner)),
            None => {
                #[allow(clippy::disallowed_methods)] // the one place that reaches the OS generator for ids
                let mut rng = rand::rng();
                draw(&mut rng)
            }
        }
    }

    /// A random (version 4) UUID.
    pub fn uuid(&self) -> Uuid {
        let mut bytes = [0u8; 16];
        self.fill(&mut bytes);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// A time-ordered uuid (version 7): `unix_ms` in its first 48 bits, the rest random.
    pub fn uuid_at(&self, unix_ms: u64) -> Uuid {
        let mut bytes = [0u8; 10];
        self.fill(&mut bytes);
        uuid::Builder::from_unix_timestamp_millis(unix_ms, &bytes).into_uuid()
    }

    /// A number in `0..bound`; 0 when `bound` is 0.
    pub fn below(&self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.with(|rng| rng.random_range(0..bound))
    }

    pub fn fill(&self, bytes: &mut [u8]) {
        self.with(|rng| rng.fill_bytes(bytes));
    }

    /// `len` characters drawn uniformly from `alphabet` (ASCII).
    pub fn string(&self, alphabet: &[u8], len: usize) -> String {
        self.with(|rng| draw_string(rng, alphabet, len))
    }
}

fn draw_string(rng: &mut dyn RngCore, alphabet: &[u8], len: usize) -> String {
    if alphabet.is_empty() {
        return String::new();
    }
    (0..len).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect()
}

/// Key material from the operating system's CSPRNG, never from a seeded source.
pub fn secret_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    #[allow(clippy::disallowed_methods)] // secrets bypass the seedable seam on purpose
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// `len` characters of `alphabet` from the operating system's CSPRNG, never from a seeded source.
pub fn secret_string(alphabet: &[u8], len: usize) -> String {
    #[allow(clippy::disallowed_methods)] // secrets bypass the seedable seam on purpose
    let mut rng = rand::rng();
    draw_string(&mut rng, alphabet, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_ids_and_choices() {
        let (a, b) = (Random::seeded(7), Random::seeded(7));
        for _ in 0..10 {
            assert_eq!(a.uuid(), b.uuid());
            assert_eq!(a.below(1000), b.below(1000));
            assert_eq!(a.string(b"abc", 8), b.string(b"abc", 8));
        }
        assert_ne!(Random::seeded(8).uuid(), Random::seeded(7).uuid());
    }

    #[test]
    fn uuids_are_version_4_and_bounds_hold() {
        let random = Random::os();
        let id = random.uuid();
        assert_eq!(id.get_version_num(), 4);
        assert_ne!(id, random.uuid());
        assert_eq!(random.below(0), 0);
        assert!((0..100).all(|_| random.below(3) < 3));
        assert_eq!(secret_string(b"xy", 16).len(), 16);
        assert_ne!(secret_bytes::<32>(), [0u8; 32]);
    }
}
