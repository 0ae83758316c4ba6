//! UDP generic segmentation and receive offload (Linux `UDP_SEGMENT`, `UDP_GRO`): one
//! `sendmsg` carries many equal-sized datagrams to one destination, and one `recvmsg` can
//! return many, so the kernel walks its stack once per burst instead of once per packet. The
//! tun data plane uses both; each falls back to one datagram per call where unsupported.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// `UDP_SEGMENT` from `linux/udp.h` (not exported by the libc crate for glibc targets).
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` from `linux/udp.h`.
const UDP_GRO: libc::c_int = 104;
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

/// Asks the kernel to hand over coalesced datagrams (see [`recv_segments`]). Best effort.
pub(crate) fn enable_gro(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a pointer to a c_int with its correct length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_GRO,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

/// Receives into `buf`: the bytes, the sender, and the segment size when the kernel
/// coalesced several datagrams (each `segment` bytes, the last possibly shorter).
pub(crate) fn recv_segments(
    fd: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<usize>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; its pointers point into locals and `buf`, which outlive
    // the call; the control messages are read only within the length the kernel reported.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let (len, addr) = socket2::SockAddr::try_init(|storage, addr_len| {
            msg.msg_name = storage.cast();
            msg.msg_namelen = *addr_len;
            let received = libc::recvmsg(fd, &mut msg, 0);
            if received < 0 {
                return Err(io::Error::last_os_error());
            }
            *addr_len = msg.msg_namelen;
            Ok(received as usize)
        })?;
        let from = addr
            .as_socket()
            .ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
        let mut segment = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                if size > 0 {
                    segment = Some(size as usize);
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((len, from, segment))
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

    #[test]
    fn coalesced_datagrams_are_split_back_by_their_segment_size() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let gro = enable_gro(receiver.as_raw_fd());
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let payload: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        if send_segments(
            sender.as_raw_fd(),
            &payload,
            100,
            receiver.local_addr().unwrap(),
        )
        .is_err()
        {
            eprintln!("UDP GSO unsupported here");
            return;
        }
        // With GRO the three datagrams may come as one buffer; without, one by one.
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        while received.len() < 250 {
            let (len, from, segment) = recv_segments(receiver.as_raw_fd(), &mut buf).unwrap();
            assert_eq!(from, sender.local_addr().unwrap());
            if let Some(segment) = segment {
                assert!(gro);
                assert_eq!(segment, 100);
            }
            received.extend_from_slice(&buf[..len]);
        }
        assert_eq!(received, payload);
    }
}
