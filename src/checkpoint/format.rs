//! The checkpoint file layout (all integers little-endian):
//!
//! ```text
//! magic    20 bytes  "TIDEMILL-CHECKPOINT\n"
//! version   4 bytes  u32, FORMAT_VERSION
//! length    8 bytes  u64, payload bytes
//! digest   32 bytes  BLAKE3 of the payload
//! payload  `length` bytes
//! ```
//!
//! A reader checks every field before it trusts the payload: a file cut
//! short, a flipped bit anywhere, another format version or trailing bytes
//! are each reported as what they are ([`Invalid`]).

use std::fmt;

/// The first bytes of every checkpoint file.
pub const MAGIC: &[u8; 20] = b"TIDEMILL-CHECKPOINT\n";

/// The version of the layout written here.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes before the payload.
pub const HEADER_BYTES: usize = 20 + 4 + 8 + 32;

/// Why a file is not a usable checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Shorter than its header, or than the payload its header announces.
    Truncated {
        /// Bytes present.
        have: u64,
        /// Bytes the header (or the header alone) needs.
        need: u64,
    },
    /// Does not start with [`MAGIC`]: not a checkpoint.
    NotACheckpoint,
    /// Written in a layout this version does not read.
    Version(u32),
    /// More bytes than the header announces.
    Trailing(u64),
    /// The payload's digest differs from the one recorded: corrupt.
    Digest,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Truncated { have, need } => {
                write!(f, "truncated: {have} bytes of the {need} its header needs")
            }
            Invalid::NotACheckpoint => write!(f, "not a tidemill checkpoint (no magic string)"),
            Invalid::Version(v) => write!(
                f,
                "checkpoint format version {v}; this build reads version {FORMAT_VERSION}"
            ),
            Invalid::Trailing(n) => write!(f, "{n} bytes after the payload"),
            Invalid::Digest => write!(f, "corrupt: the payload's BLAKE3 digest does not match"),
        }
    }
}

/// The file content of a checkpoint holding `payload`.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(payload).as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a checkpoint file's content, once every check passed.
pub fn decode(bytes: &[u8]) -> Result<&[u8], Invalid> {
    let have = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        // A prefix of the magic is a checkpoint cut short; anything else is not one.
        return Err(if MAGIC.starts_with(bytes) {
            Invalid::Truncated {
                have,
                need: HEADER_BYTES as u64,
            }
        } else {
            Invalid::NotACheckpoint
        });
    }
    if bytes.len() < HEADER_BYTES {
        return Err(Invalid::Truncated {
            have,
            need: HEADER_BYTES as u64,
        });
    }
    let field = |at: usize, n: usize| &bytes[at..at + n];
    let version = u32::from_le_bytes(
        field(20, 4)
            .try_into()
            .map_err(|_| Invalid::NotACheckpoint)?,
    );
    if version != FORMAT_VERSION {
        return Err(Invalid::Version(version));
    }
    let length = u64::from_le_bytes(
        field(24, 8)
            .try_into()
            .map_err(|_| Invalid::NotACheckpoint)?,
    );
    let need = (HEADER_BYTES as u64).saturating_add(length);
    if have < need {
        return Err(Invalid::Truncated { have, need });
    }
    if have > need {
        return Err(Invalid::Trailing(have - need));
    }
    let payload = &bytes[HEADER_BYTES..];
    if blake3::hash(payload).as_bytes() != field(32, 32) {
        return Err(Invalid::Digest);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_checkpoint_reads_back_its_payload() {
        for payload in [&b""[..], b"x", &[7u8; 10_000][..]] {
            assert_eq!(decode(&encode(payload)), Ok(payload));
        }
    }

    #[test]
    fn each_defect_is_named() {
        let good = encode(b"parameters");
        let cut = &good[..good.len() - 1];
        assert_eq!(
            decode(cut),
            Err(Invalid::Truncated {
                have: cut.len() as u64,
                need: good.len() as u64
            })
        );
        assert!(matches!(
            decode(&good[..10]),
            Err(Invalid::Truncated { .. })
        ));
        assert!(matches!(
            decode(&good[..40]),
            Err(Invalid::Truncated { .. })
        ));
        assert_eq!(
            decode(b"PAR1 not a checkpoint"),
            Err(Invalid::NotACheckpoint)
        );
        let mut v2 = good.clone();
        v2[20] = 2;
        assert_eq!(decode(&v2), Err(Invalid::Version(2)));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(Invalid::Trailing(1)));
        assert!(Invalid::Digest.to_string().contains("corrupt"));
    }

    proptest! {
        /// Any single flipped bit, anywhere in the file, is caught.
        #[test]
        fn every_flipped_bit_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..300), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let good = encode(&payload);
            let mut bad = good.clone();
            let i = at.index(bad.len());
            bad[i] ^= 1 << bit;
            prop_assert!(decode(&bad).is_err(), "flip at byte {i} bit {bit} went unnoticed");
        }
    }
}
