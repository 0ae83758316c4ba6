//! UDP generic segmentation offload (Linux `UDP_SEGMENT`): one `sendmsg` carries many
//! equal-sized datagrams to one destination, and the kernel walks its stack once for all of
//! them. The tun data plane uses it for bursts of full-sized packets.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// `UDP_SEGMENT` from `linux/udp.h` (not exported by the libc crate for glibc targets).
const UDP_SEGMENT: libc::c_int = 103;
/// Most segments in one send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub(crate) const GSO_SEGMENTS_MAX: usize = 64;
/// Largest total payload of one send (an IPv4 datagram carries at most 65,507 bytes).
pub(crate) const GSO_BYTES_MAX: usize = 65_000;

/// Sends `buf` as datagrams of `segment_bytes` each (the last may be shorter) to `to`.
/// `to` must match the socket's family (IPv4-mapped for a dual-stack IPv6 socket).
pub(crate) fn send_segments(
    fd: RawFd,
    buf: &[u8],
    segment_bytes: u16,
    to: SocketAddr,
) -> io::Result<usize> {
    let addr = socket2::SockAddr::from(to);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // u64 storage keeps the control buffer aligned for `cmsghdr`.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer set below points into locals that outlive
    // the sendmsg call, and the control buffer is large enough for one CMSG_SPACE(2).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the GSO control message"));
        }
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment_bytes);
        let sent = libc::sendmsg(fd, &msg, 0);
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(sent as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn one_send_arrives_as_equal_sized_datagrams() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        match send_segments(
            sender.as_raw_fd(),
            &payload,
            100,
            receiver.local_addr().unwrap(),
        ) {
            Ok(sent) => assert_eq!(sent, 250),
            // A kernel without UDP GSO: the engine falls back to one send per datagram.
            Err(e) => {
                eprintln!("UDP GSO unsupported here: {e}");
                return;
            }
        }
        let mut buf = [0u8; 512];
        let mut sizes = Vec::new();
        for _ in 0..3 {
            let (len, _) = receiver.recv_from(&mut buf).unwrap();
            sizes.push(len);
        }
        assert_eq!(sizes, vec![100, 100, 50]);
    }
}
