//! The mesh's one encoding module: bincode 2 with serde, standard configuration (little endian,
//! varint) as in `raft/src/codec.rs`, and length-prefixed frames for QUIC streams. Every decode
//! is bounded by [`FRAME_BYTES_MAX`], so a hostile length prefix cannot make us allocate much.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::TransportError;

/// Largest frame (RPC request, response, stream message) we send or accept: 16 MiB.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_BYTES_MAX>,
> {
    bincode::config::standard().with_limit::<FRAME_BYTES_MAX>()
}

/// Encodes a value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, TransportError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| TransportError::Codec(e.to_string()))
}

/// Decodes a value; all bytes must be consumed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TransportError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| TransportError::Codec(e.to_string()))?;
    if used != bytes.len() {
        return Err(TransportError::Codec(format!(
            "{} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Writes one frame: a 4-byte big-endian length, then the payload.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    payload: &[u8],
) -> Result<(), TransportError> {
    if payload.len() > FRAME_BYTES_MAX {
        return Err(TransportError::FrameTooLarge {
            len_bytes: payload.len(),
            max_bytes: FRAME_BYTES_MAX,
        });
    }
    let header = (payload.len() as u32).to_be_bytes();
    // One write of header+payload for small frames saves a STREAM frame per message.
    if payload.len() <= 16 * 1024 {
        let mut buf = Vec::with_capacity(4 + payload.len());
        buf.extend_from_slice(&header);
        buf.extend_from_slice(payload);
        send.write_all(&buf).await
    } else {
        match send.write_all(&header).await {
            Ok(()) => send.write_all(payload).await,
            Err(e) => Err(e),
        }
    }
    .map_err(|_| TransportError::Closed)
}

/// Reads one frame; `Ok(None)` when the peer finished the stream cleanly between frames.
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<Bytes>, TransportError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(_) => return Err(TransportError::Closed),
    }
    let len_bytes = u32::from_be_bytes(header) as usize;
    if len_bytes > FRAME_BYTES_MAX {
        return Err(TransportError::FrameTooLarge {
            len_bytes,
            max_bytes: FRAME_BYTES_MAX,
        });
    }
    let mut payload = vec![0u8; len_bytes];
    recv.read_exact(&mut payload)
        .await
        .map_err(|_| TransportError::Closed)?;
    Ok(Some(Bytes::from(payload)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<(u64, String, Vec<u8>)>(&bytes);
            let _ = decode::<crate::join_wire::JoinRequest>(&bytes);
            let _ = decode::<crate::join_wire::JoinResponse>(&bytes);
        }

        #[test]
        fn values_round_trip(a in any::<u64>(), s in ".{0,40}", v in proptest::collection::vec(any::<u8>(), 0..100)) {
            let value = (a, s, v);
            let bytes = encode(&value).unwrap();
            prop_assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes).unwrap(), value);
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(decode::<u32>(&bytes).is_err());
    }
}
