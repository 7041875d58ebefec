//! Ids that name things (calls, traces, spans). They must not repeat, but
//! nothing rests on their being unguessable, so they come from a fast
//! generator per thread, seeded once from the operating system, instead of
//! a system call each: three of those were a visible part of every call.
//! Secrets come from [`crate::secret`], never from here.

use std::cell::Cell;

thread_local! {
    /// This thread's position in its sequence.
    static STATE: Cell<u64> = Cell::new(u64::from_le_bytes(crate::secret::random_bytes()));
}

/// The next 64 bits of this thread's sequence: a Weyl sequence (every state
/// once per 2^64 steps) mixed by a 128-bit multiply (wyrand).
fn next() -> u64 {
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let product = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((product >> 64) as u64) ^ (product as u64)
    })
}

/// `N` bytes for a new id, never all zero (W3C trace context forbids it).
pub fn unique_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    loop {
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&next().to_le_bytes()[..chunk.len()]);
        }
        if bytes.iter().any(|&b| b != 0) {
            return bytes;
        }
    }
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_do_not_repeat_within_or_across_threads() {
        let draw = || {
            (0..10_000)
                .map(|_| unique_bytes::<12>())
                .collect::<Vec<_>>()
        };
        let other = std::thread::spawn(draw);
        let mut seen = HashSet::new();
        for id in draw().into_iter().chain(other.join().unwrap()) {
            assert!(seen.insert(id), "{} repeated", hex(&id));
        }
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }
}
