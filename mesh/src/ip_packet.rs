//! Minimal IPv4 + UDP (and ICMP echo) encoding for the userspace data plane: Shoal's QUIC
//! datagrams travel inside WireGuard as ordinary IPv4/UDP packets between mesh addresses, so a
//! `tun` node or a standard WireGuard peer sees exactly what a kernel would have sent. Pure.

use std::net::{Ipv4Addr, SocketAddrV4};

/// IPv4 header without options.
pub const IPV4_HEADER_BYTES: usize = 20;
/// UDP header.
pub const UDP_HEADER_BYTES: usize = 8;
const PROTO_ICMP: u8 = 1;
const PROTO_UDP: u8 = 17;
const TTL: u8 = 64;

/// Why an IP packet was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than its headers say.
    #[error("truncated packet")]
    Truncated,
    /// Not IPv4, bad header length, or a fragment.
    #[error("unsupported IP packet")]
    Unsupported,
    /// A checksum did not match.
    #[error("bad checksum")]
    Checksum,
    /// The payload does not fit in one IPv4 packet.
    #[error("payload too large")]
    TooLarge,
}

/// A parsed IPv4 packet of the kinds the userspace node handles.
#[derive(Debug, PartialEq, Eq)]
pub enum Ipv4Packet<'a> {
    /// A UDP datagram.
    Udp {
        /// Source address and port.
        src: SocketAddrV4,
        /// Destination address and port.
        dst: SocketAddrV4,
        /// UDP payload.
        payload: &'a [u8],
    },
    /// An ICMP echo request (ping).
    IcmpEchoRequest {
        /// Sender.
        src: Ipv4Addr,
        /// Pinged address.
        dst: Ipv4Addr,
        /// The ICMP message (type, code, checksum, id, seq, data).
        icmp: &'a [u8],
    },
    /// Anything else (TCP, other ICMP): dropped by the userspace node.
    Other {
        /// Source.
        src: Ipv4Addr,
        /// Destination.
        dst: Ipv4Addr,
        /// IP protocol number.
        protocol: u8,
    },
}

/// The Internet checksum (RFC 1071) of `data`, folded from an initial sum.
fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for chunk in &mut chunks {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> u32 {
    let s = src.octets();
    let d = dst.octets();
    u32::from(u16::from_be_bytes([s[0], s[1]]))
        + u32::from(u16::from_be_bytes([s[2], s[3]]))
        + u32::from(u16::from_be_bytes([d[0], d[1]]))
        + u32::from(u16::from_be_bytes([d[2], d[3]]))
        + u32::from(protocol)
        + len as u32
}

fn write_ipv4_header(out: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, total_len: usize) {
    out[0] = 0x45; // version 4, 5 words of header
    out[1] = 0;
    out[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    out[4..6].copy_from_slice(&[0, 0]); // identification: unused, DF is set
    out[6..8].copy_from_slice(&[0x40, 0]); // don't fragment
    out[8] = TTL;
    out[9] = protocol;
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(0, &out[..IPV4_HEADER_BYTES]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Builds an IPv4/UDP packet into `out` (cleared first).
pub fn build_udp(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), PacketError> {
    let udp_len = UDP_HEADER_BYTES + payload.len();
    let total_len = IPV4_HEADER_BYTES + udp_len;
    if total_len > usize::from(u16::MAX) {
        return Err(PacketError::TooLarge);
    }
    out.clear();
    out.resize(IPV4_HEADER_BYTES + UDP_HEADER_BYTES, 0);
    out.extend_from_slice(payload);
    write_ipv4_header(out, *src.ip(), *dst.ip(), PROTO_UDP, total_len);
    let udp = &mut out[IPV4_HEADER_BYTES..];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let sum = checksum(
        pseudo_header_sum(*src.ip(), *dst.ip(), PROTO_UDP, udp_len),
        udp,
    );
    // A computed 0 is sent as 0xffff (0 means "no checksum" in UDP over IPv4).
    let sum = if sum == 0 { 0xffff } else { sum };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// Parses an IPv4 packet (as decrypted from WireGuard), verifying lengths and checksums.
pub fn parse_ipv4(packet: &[u8]) -> Result<Ipv4Packet<'_>, PacketError> {
    if packet.len() < IPV4_HEADER_BYTES {
        return Err(PacketError::Truncated);
    }
    if packet[0] >> 4 != 4 {
        return Err(PacketError::Unsupported);
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header_len < IPV4_HEADER_BYTES || total_len < header_len {
        return Err(PacketError::Unsupported);
    }
    if total_len > packet.len() {
        return Err(PacketError::Truncated);
    }
    // Fragments are dropped: we never send them (DF, and QUIC sizes its packets to the MTU).
    let more_fragments = packet[6] & 0x20 != 0;
    let offset = u16::from_be_bytes([packet[6] & 0x1f, packet[7]]);
    if more_fragments || offset != 0 {
        return Err(PacketError::Unsupported);
    }
    if checksum(0, &packet[..header_len]) != 0 {
        return Err(PacketError::Checksum);
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let protocol = packet[9];
    let body = &packet[header_len..total_len];
    match protocol {
        PROTO_UDP => {
            if body.len() < UDP_HEADER_BYTES {
                return Err(PacketError::Truncated);
            }
            let udp_len = usize::from(u16::from_be_bytes([body[4], body[5]]));
            if udp_len < UDP_HEADER_BYTES || udp_len > body.len() {
                return Err(PacketError::Truncated);
            }
            let udp = &body[..udp_len];
            let stored = u16::from_be_bytes([udp[6], udp[7]]);
            if stored != 0 && checksum(pseudo_header_sum(src, dst, PROTO_UDP, udp_len), udp) != 0 {
                return Err(PacketError::Checksum);
            }
            Ok(Ipv4Packet::Udp {
                src: SocketAddrV4::new(src, u16::from_be_bytes([udp[0], udp[1]])),
                dst: SocketAddrV4::new(dst, u16::from_be_bytes([udp[2], udp[3]])),
                payload: &udp[UDP_HEADER_BYTES..],
            })
        }
        PROTO_ICMP if body.len() >= 8 && body[0] == 8 && body[1] == 0 => {
            if checksum(0, body) != 0 {
                return Err(PacketError::Checksum);
            }
            Ok(Ipv4Packet::IcmpEchoRequest {
                src,
                dst,
                icmp: body,
            })
        }
        _ => Ok(Ipv4Packet::Other { src, dst, protocol }),
    }
}

/// The echo reply to an echo request parsed by [`parse_ipv4`]: same id, sequence and data.
pub fn build_icmp_echo_reply(src: Ipv4Addr, dst: Ipv4Addr, request_icmp: &[u8], out: &mut Vec<u8>) {
    let total_len = IPV4_HEADER_BYTES + request_icmp.len();
    out.clear();
    out.resize(IPV4_HEADER_BYTES, 0);
    out.extend_from_slice(request_icmp);
    write_ipv4_header(out, src, dst, PROTO_ICMP, total_len);
    let icmp = &mut out[IPV4_HEADER_BYTES..];
    icmp[0] = 0; // echo reply
    icmp[2..4].copy_from_slice(&[0, 0]);
    let sum = checksum(0, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, last), port)
    }

    #[test]
    fn a_known_udp_packet_has_correct_checksums() {
        let mut out = Vec::new();
        build_udp(addr(1, 1000), addr(2, 2000), b"hello", &mut out).unwrap();
        assert_eq!(out.len(), 33);
        assert_eq!(checksum(0, &out[..20]), 0, "header checksum verifies");
        assert_eq!(
            parse_ipv4(&out).unwrap(),
            Ipv4Packet::Udp {
                src: addr(1, 1000),
                dst: addr(2, 2000),
                payload: b"hello"
            }
        );
    }

    #[test]
    fn echo_reply_answers_an_echo_request() {
        // An echo request as `ping` sends it: type 8, id 0x1234, seq 1, 4 data bytes.
        let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3, 4];
        let sum = checksum(0, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut request = vec![0; 20];
        request.extend_from_slice(&icmp);
        write_ipv4_header(
            &mut request,
            Ipv4Addr::new(10, 77, 0, 9),
            Ipv4Addr::new(10, 77, 0, 1),
            PROTO_ICMP,
            32,
        );
        let Ok(Ipv4Packet::IcmpEchoRequest { src, dst, icmp }) = parse_ipv4(&request) else {
            panic!("not parsed as echo request")
        };
        let mut reply = Vec::new();
        build_icmp_echo_reply(dst, src, icmp, &mut reply);
        assert_eq!(checksum(0, &reply[20..]), 0);
        assert_eq!(reply[20], 0);
        assert_eq!(&reply[24..], &request[24..]);
        assert_eq!(&reply[12..16], &[10, 77, 0, 1]);
    }

    proptest! {
        #[test]
        fn udp_round_trips(a in 1u8..255, b in 1u8..255, pa in any::<u16>(), pb in any::<u16>(),
                           payload in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let mut out = Vec::new();
            build_udp(addr(a, pa), addr(b, pb), &payload, &mut out).unwrap();
            let parsed = parse_ipv4(&out).unwrap();
            prop_assert_eq!(parsed, Ipv4Packet::Udp { src: addr(a, pa), dst: addr(b, pb), payload: &payload });
        }

        #[test]
        fn random_bytes_never_panic_the_parser(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_ipv4(&bytes);
        }

        #[test]
        fn a_flipped_bit_or_truncation_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..200),
                                                   bit in any::<usize>(), cut in any::<usize>()) {
            let mut out = Vec::new();
            build_udp(addr(1, 1), addr(2, 2), &payload, &mut out).unwrap();
            let mut flipped = out.clone();
            let bit = bit % (flipped.len() * 8);
            flipped[bit / 8] ^= 1 << (bit % 8);
            // (A flip that turns the UDP checksum into 0 means "no checksum": still the same data.)
            if !(26..28).contains(&(bit / 8)) {
                prop_assert_ne!(parse_ipv4(&flipped).ok(), parse_ipv4(&out).ok());
            }
            let cut = cut % out.len();
            prop_assert!(parse_ipv4(&out[..cut]).is_err());
        }
    }
}
