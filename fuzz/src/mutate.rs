//! A deterministic mutator: the same seed gives the same inputs on every
//! machine, so a failure in CI reproduces anywhere.

/// xorshift64*: small, fast, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Bytes that tend to matter to JSON, netlink and our own syntax.
const INTERESTING: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"65535",
    b"65536",
    b"4294967296",
    b"1e999",
    b"\"\"",
    b"\"0.4.0\"",
    b"\"1.1.0\"",
    b"\"0.2.0\"",
    b"\"::ffff:1.2.3.4/120\"",
    b"\"10.0.0.0/33\"",
    b"\"fd00::/129\"",
    b"\"%d\"",
    b"\"../../x\"",
    b"\xff\xfe",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"=",
    b";",
    b"!=",
    b"ip daddr",
    b"tcp dport",
];

/// One random change of `data`: flip, set, insert, delete, duplicate, or
/// splice in a token or a piece of `other` (another corpus entry).
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    match rng.below(8) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = rng.next_u64() as u8;
        }
        2 => {
            let tok = INTERESTING[rng.below(INTERESTING.len())];
            let at = rng.below(len + 1);
            data.splice(at..at, tok.iter().copied());
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(16));
            data.drain(at..at + n);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below((len - at).min(64));
            let piece = data[at..at + n].to_vec();
            let to = rng.below(data.len() + 1);
            data.splice(to..to, piece);
        }
        5 if !other.is_empty() => {
            let at = rng.below(other.len());
            let n = 1 + rng.below((other.len() - at).min(128));
            let to = rng.below(len + 1);
            data.splice(to..to, other[at..at + n].iter().copied());
        }
        6 if len > 0 => data.truncate(rng.below(len)),
        _ => {
            // A numeric field (as ASCII digits) pushed to an edge.
            if let Some(i) = data.iter().position(|b| b.is_ascii_digit()) {
                let edge = INTERESTING[10 + rng.below(5)];
                data.splice(i..i + 1, edge.iter().copied());
            } else if len > 0 {
                let i = rng.below(len);
                data[i] = data[i].wrapping_add(1);
            }
        }
    }
}
