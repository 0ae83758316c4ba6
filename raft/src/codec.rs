//! The one place that knows the wire and disk encoding (bincode 2 with serde), so that it can
//! be swapped (DESIGN.md §9). Every decode is bounded by [`DECODE_BYTES_MAX`], so that a hostile
//! length prefix cannot make us allocate gigabytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Upper bound on any single encoded value we decode: a log entry, an RPC frame or a whole
/// snapshot (100,000 workstations encode to roughly 20 MB, see the `state_size` benchmark).
pub const DECODE_BYTES_MAX: usize = 512 * 1024 * 1024;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_BYTES_MAX>,
> {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be encoded (a type the format cannot express, or over the limit).
    #[error("encode failed: {0}")]
    Encode(String),
    /// The bytes are not a valid encoding of the expected type, or exceed the size limit.
    #[error("decode failed: {0}")]
    Decode(String),
    /// The bytes decoded, but not all of them were consumed: a framing error.
    #[error("decode left {trailing_bytes} trailing bytes")]
    Trailing {
        /// How many bytes were left over.
        trailing_bytes: usize,
    },
    /// A checksummed frame's CRC did not match its contents.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC32 stored with the data.
        stored: u32,
        /// The CRC32 computed over the data as read.
        computed: u32,
    },
    /// A checksummed frame is shorter than its header.
    #[error("frame of {len_bytes} bytes is shorter than its checksum header")]
    Truncated {
        /// Length of the frame that was read.
        len_bytes: usize,
    },
}

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a value; all bytes must be consumed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing {
            trailing_bytes: bytes.len() - used,
        });
    }
    Ok(value)
}

/// Encodes a value and prefixes it with the CRC32 of the encoding (4 bytes, little endian),
/// the format of everything we store on disk and of snapshot data.
pub fn encode_checked<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    frame_checked(encode(value)?)
}

/// Prefixes encoded bytes with their CRC32: the frame of [`encode_checked`], for a body
/// encoded by other means (a versioned format, see `crate::state_format`).
pub fn frame_checked(body: Vec<u8>) -> Result<Vec<u8>, CodecError> {
    let mut framed = Vec::with_capacity(body.len() + 4);
    framed.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    framed.extend_from_slice(&body);
    Ok(framed)
}

/// Verifies the CRC32 prefix written by [`encode_checked`] and returns the body.
pub fn verify_checked(framed: &[u8]) -> Result<&[u8], CodecError> {
    let Some((header, body)) = framed.split_first_chunk::<4>() else {
        return Err(CodecError::Truncated {
            len_bytes: framed.len(),
        });
    };
    let stored = u32::from_le_bytes(*header);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(body)
}

/// Verifies the CRC32 prefix written by [`encode_checked`] and decodes the value.
pub fn decode_checked<T: DeserializeOwned>(framed: &[u8]) -> Result<T, CodecError> {
    decode(verify_checked(framed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_round_trip_and_any_flipped_bit_is_detected() {
        let value = (42u64, "workstation".to_string(), vec![1u8, 2, 3]);
        let framed = encode_checked(&value).unwrap();
        let back: (u64, String, Vec<u8>) = decode_checked(&framed).unwrap();
        assert_eq!(back, value);
        for byte_idx in 0..framed.len() {
            let mut bad = framed.clone();
            bad[byte_idx] ^= 0x10;
            assert!(
                decode_checked::<(u64, String, Vec<u8>)>(&bad).is_err(),
                "flip at {byte_idx} not detected"
            );
        }
    }

    #[test]
    fn truncated_and_trailing_bytes_are_refused() {
        assert!(matches!(
            decode_checked::<u64>(&[1, 2]),
            Err(CodecError::Truncated { .. })
        ));
        let mut bytes = encode(&7u64).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(CodecError::Trailing { trailing_bytes: 1 })
        ));
    }

    #[test]
    fn hostile_length_prefix_is_refused_without_allocating() {
        // A Vec<u8> whose varint length claims u64::MAX elements.
        let bytes = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
