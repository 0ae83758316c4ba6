//! The join protocol's packets, multiplexed on the WireGuard UDP port. Pure encode/decode.
//!
//! WireGuard messages start with a little-endian u32 type 1..=4, so their first byte is 1..=4
//! and the next three are zero. Join packets start with `b"SJ\x01"` and a kind byte, which no
//! WireGuard message can, so one socket serves both.
//!
//! ```text
//! request:  "SJ" 0x01 0x01 | ephemeral public (32) | joiner static public (32) | AEAD(JoinRequest)
//! response: "SJ" 0x01 0x02 | ephemeral public (32, echoed)                     | AEAD(JoinResponse)
//! ```
//!
//! The AEAD is ChaCha20-Poly1305 (nonce 0: each key is used once per direction) under
//! `SHA-256(label | DH(e, M) | DH(J, M) | e | J | M)` where `e` is the joiner's ephemeral key,
//! `J` its static key and `M` the member's static key from the token. Only the holder of `M`
//! can read the request (the token secret stays confidential); only the holder of `J` can have
//! produced it (the joiner proves its identity); only the holder of `M` can answer.

use std::net::SocketAddr;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::admission::{JoinAccepted, JoinRefusal};
use crate::codec;
use crate::identity::{Identity, NodePublicKey};
use crate::random;

/// The first three bytes of every join packet.
pub const JOIN_MAGIC: [u8; 3] = [b'S', b'J', 1];
/// Kind byte of a request.
pub const KIND_REQUEST: u8 = 1;
/// Kind byte of a response.
pub const KIND_RESPONSE: u8 = 2;
/// Largest join packet sent or accepted (one UDP datagram).
pub const JOIN_PACKET_BYTES_MAX: usize = 60_000;
const HEADER_BYTES: usize = 4;
const KEY_BYTES: usize = 32;
const TAG_BYTES: usize = 16;
const REQUEST_LABEL: &[u8] = b"shoal join v1 request";
const RESPONSE_LABEL: &[u8] = b"shoal join v1 response";

/// The plaintext of a join request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Token id.
    pub token_id: String,
    /// Token secret.
    pub token_secret: [u8; 32],
    /// The endpoint the joiner wants announced (`None`: use the packet's source address).
    pub endpoint: Option<SocketAddr>,
    /// The joiner's clock (Unix ms), checked against the replay window.
    pub timestamp_ms: u64,
    /// Random nonce, remembered by the member within the replay window.
    pub nonce: [u8; 16],
}

/// The plaintext of a join response.
pub type JoinResponse = Result<JoinAccepted, JoinRefusal>;

/// Why a join packet was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinWireError {
    /// Not a join packet, or too short or long.
    #[error("malformed join packet")]
    Malformed,
    /// Authentication failed (wrong key, tampering, or not for us).
    #[error("join packet failed authentication")]
    Unauthenticated,
    /// Decrypted, but the contents do not decode.
    #[error("join packet contents do not decode")]
    Decode,
}

/// Whether a datagram is a join packet (as opposed to WireGuard).
pub fn is_join_packet(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_BYTES && datagram[..3] == JOIN_MAGIC
}

/// What the joiner keeps to read the answer.
#[derive(Clone)]
pub struct PendingJoin {
    ephemeral_public: [u8; 32],
    response_key: [u8; 32],
}

/// What the member keeps to answer.
#[derive(Clone)]
pub struct ReplyKey {
    ephemeral_public: [u8; 32],
    response_key: [u8; 32],
}

/// A request the member could decrypt.
pub struct OpenedRequest {
    /// The joiner's proven static public key.
    pub joiner_public_key: NodePublicKey,
    /// The request.
    pub request: JoinRequest,
    /// Key for the answer.
    pub reply: ReplyKey,
}

fn derive(
    label: &[u8],
    shared_ephemeral: &[u8; 32],
    shared_static: &[u8; 32],
    ephemeral: &[u8; 32],
    joiner: &[u8; 32],
    member: &[u8; 32],
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in [
        label,
        shared_ephemeral,
        shared_static,
        ephemeral,
        joiner,
        member,
    ] {
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        // Encryption only fails for inputs beyond 2^38 bytes; ours are bounded far below.
        .unwrap_or_default()
}

fn open(key: &[u8; 32], aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, JoinWireError> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| JoinWireError::Unauthenticated)
}

/// Builds a request packet to the member `member`, and the state to read its answer.
pub fn seal_request(
    joiner: &Identity,
    member: &NodePublicKey,
    request: &JoinRequest,
) -> Result<(Vec<u8>, PendingJoin), JoinWireError> {
    let ephemeral = StaticSecret::from(random::bytes::<32>());
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let member_key = member.to_x25519();
    let shared_ephemeral = ephemeral.diffie_hellman(&member_key);
    let shared_static = joiner.secret().diffie_hellman(&member_key);
    if !shared_ephemeral.was_contributory() || !shared_static.was_contributory() {
        return Err(JoinWireError::Unauthenticated);
    }
    let joiner_public = joiner.public_key().0;
    let parts = |label| {
        derive(
            label,
            shared_ephemeral.as_bytes(),
            shared_static.as_bytes(),
            &ephemeral_public,
            &joiner_public,
            &member.0,
        )
    };
    let plaintext = codec::encode(request).map_err(|_| JoinWireError::Decode)?;
    let mut packet = Vec::with_capacity(HEADER_BYTES + 2 * KEY_BYTES + plaintext.len() + TAG_BYTES);
    packet.extend_from_slice(&JOIN_MAGIC);
    packet.push(KIND_REQUEST);
    packet.extend_from_slice(&ephemeral_public);
    packet.extend_from_slice(&joiner_public);
    let sealed = seal(&parts(REQUEST_LABEL), &packet, &plaintext);
    packet.extend_from_slice(&sealed);
    Ok((
        packet,
        PendingJoin {
            ephemeral_public,
            response_key: parts(RESPONSE_LABEL),
        },
    ))
}

/// Decrypts a request packet addressed to `member`.
pub fn open_request(member: &Identity, packet: &[u8]) -> Result<OpenedRequest, JoinWireError> {
    if !is_join_packet(packet)
        || packet[3] != KIND_REQUEST
        || packet.len() < HEADER_BYTES + 2 * KEY_BYTES + TAG_BYTES
        || packet.len() > JOIN_PACKET_BYTES_MAX
    {
        return Err(JoinWireError::Malformed);
    }
    let (aad, ciphertext) = packet.split_at(HEADER_BYTES + 2 * KEY_BYTES);
    let mut ephemeral_public = [0u8; 32];
    ephemeral_public.copy_from_slice(&aad[HEADER_BYTES..HEADER_BYTES + KEY_BYTES]);
    let mut joiner_public = [0u8; 32];
    joiner_public.copy_from_slice(&aad[HEADER_BYTES + KEY_BYTES..]);
    let shared_ephemeral = member
        .secret()
        .diffie_hellman(&PublicKey::from(ephemeral_public));
    let shared_static = member
        .secret()
        .diffie_hellman(&PublicKey::from(joiner_public));
    if !shared_ephemeral.was_contributory() || !shared_static.was_contributory() {
        return Err(JoinWireError::Unauthenticated);
    }
    let member_public = member.public_key().0;
    let parts = |label| {
        derive(
            label,
            shared_ephemeral.as_bytes(),
            shared_static.as_bytes(),
            &ephemeral_public,
            &joiner_public,
            &member_public,
        )
    };
    let plaintext = open(&parts(REQUEST_LABEL), aad, ciphertext)?;
    let request: JoinRequest = codec::decode(&plaintext).map_err(|_| JoinWireError::Decode)?;
    Ok(OpenedRequest {
        joiner_public_key: NodePublicKey(joiner_public),
        request,
        reply: ReplyKey {
            ephemeral_public,
            response_key: parts(RESPONSE_LABEL),
        },
    })
}

/// Builds the response packet. A response too large for one datagram is replaced by a
/// refusal saying so (the peer list should then be trimmed by the admission callback).
pub fn seal_response(reply: &ReplyKey, response: &JoinResponse) -> Vec<u8> {
    let mut plaintext = codec::encode(response).unwrap_or_default();
    if plaintext.len() + HEADER_BYTES + KEY_BYTES + TAG_BYTES > JOIN_PACKET_BYTES_MAX {
        let refusal: JoinResponse = Err(JoinRefusal::Unavailable("join answer too large".into()));
        plaintext = codec::encode(&refusal).unwrap_or_default();
    }
    let mut packet = Vec::with_capacity(HEADER_BYTES + KEY_BYTES + plaintext.len() + TAG_BYTES);
    packet.extend_from_slice(&JOIN_MAGIC);
    packet.push(KIND_RESPONSE);
    packet.extend_from_slice(&reply.ephemeral_public);
    let sealed = seal(&reply.response_key, &packet, &plaintext);
    packet.extend_from_slice(&sealed);
    packet
}

impl PendingJoin {
    /// Whether `packet` is the answer to this request (cheap check before decrypting).
    pub fn matches(&self, packet: &[u8]) -> bool {
        packet.len() >= HEADER_BYTES + KEY_BYTES
            && is_join_packet(packet)
            && packet[3] == KIND_RESPONSE
            && packet[HEADER_BYTES..HEADER_BYTES + KEY_BYTES] == self.ephemeral_public
    }

    /// Decrypts the member's answer.
    pub fn open_response(&self, packet: &[u8]) -> Result<JoinResponse, JoinWireError> {
        if !self.matches(packet) || packet.len() > JOIN_PACKET_BYTES_MAX {
            return Err(JoinWireError::Malformed);
        }
        let (aad, ciphertext) = packet.split_at(HEADER_BYTES + KEY_BYTES);
        let plaintext = open(&self.response_key, aad, ciphertext)?;
        codec::decode(&plaintext).map_err(|_| JoinWireError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn request() -> JoinRequest {
        JoinRequest {
            token_id: "0101010101010101".into(),
            token_secret: [2; 32],
            endpoint: Some(SocketAddr::from(([127, 0, 0, 1], 5000))),
            timestamp_ms: 42,
            nonce: [9; 16],
        }
    }

    #[test]
    fn request_and_response_round_trip_between_the_right_keys_only() {
        let joiner = Identity::generate();
        let member = Identity::generate();
        let (packet, pending) = seal_request(&joiner, &member.public_key(), &request()).unwrap();
        assert!(is_join_packet(&packet));
        assert!(
            open_request(&Identity::generate(), &packet).is_err(),
            "another node cannot read it"
        );
        let opened = open_request(&member, &packet).unwrap();
        assert_eq!(opened.joiner_public_key, joiner.public_key());
        assert_eq!(opened.request, request());
        let accepted: JoinResponse = Ok(JoinAccepted {
            node_id: 7,
            cluster_id: "c".into(),
            mesh_addr: Ipv4Addr::new(10, 77, 0, 7),
            mesh_prefix_len: 16,
            peers: vec![],
            extra: vec![1, 2],
        });
        let answer = seal_response(&opened.reply, &accepted);
        assert_eq!(pending.open_response(&answer).unwrap(), accepted);
        let refused: JoinResponse = Err(JoinRefusal::TokenExpired);
        assert_eq!(
            pending
                .open_response(&seal_response(&opened.reply, &refused))
                .unwrap(),
            refused
        );
    }

    #[test]
    fn a_swapped_joiner_key_fails_authentication() {
        // Someone replaying the packet with another "joiner" key cannot make it verify.
        let member = Identity::generate();
        let (mut packet, _) =
            seal_request(&Identity::generate(), &member.public_key(), &request()).unwrap();
        packet[4 + 32..4 + 64].copy_from_slice(&Identity::generate().public_key().0);
        assert_eq!(
            open_request(&member, &packet).err(),
            Some(JoinWireError::Unauthenticated)
        );
    }

    #[test]
    fn wireguard_messages_are_never_taken_for_join_packets() {
        for kind in 1u8..=4 {
            let mut wg = vec![kind, 0, 0, 0];
            wg.extend_from_slice(&[0u8; 144]);
            assert!(!is_join_packet(&wg));
        }
    }

    proptest! {
        #[test]
        fn random_and_mutated_packets_never_panic_and_never_open(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            flip in any::<usize>(),
        ) {
            let member = Identity::from_secret_bytes([5; 32]);
            let mut random = bytes.clone();
            if random.len() >= 4 { random[..3].copy_from_slice(&JOIN_MAGIC); random[3] = KIND_REQUEST; }
            prop_assert!(open_request(&member, &random).is_err());
            let (mut packet, pending) = seal_request(&Identity::from_secret_bytes([6; 32]), &member.public_key(), &request()).unwrap();
            let idx = flip % packet.len();
            packet[idx] ^= 0x01;
            prop_assert!(open_request(&member, &packet).is_err());
            prop_assert!(pending.open_response(&bytes).is_err());
            let cut = flip % packet.len();
            prop_assert!(open_request(&member, &packet[..cut]).is_err());
        }
    }
}
