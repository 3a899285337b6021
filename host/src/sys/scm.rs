//! Bytes with descriptors attached (SCM_RIGHTS) on a Unix stream socket: the master↔worker
//! channel (`ctl::channel`) passes fds this way.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

/// The kernel's limit on descriptors in one message (`SCM_MAX_FD`): a control buffer this large
/// is never truncated, so no received descriptor is ever lost (and leaked) by truncation.
const SCM_MAX_FD: usize = 253;

/// Sends `bytes` on a stream socket with `fds` attached to its first byte; returns how many bytes
/// were sent (the fds went with them when it is more than 0). Never raises SIGPIPE.
pub fn send_with_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(bytes)];
    Ok(sendmsg::<UnixAddr>(socket.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?)
}

/// Receives into `buf`; the descriptors that came with these bytes are appended to `fds`, each
/// close-on-exec (`MSG_CMSG_CLOEXEC`). Returns the number of bytes (0: end of stream).
pub fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<UnixAddr>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let cmsgs = msg.cmsgs().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("control data: {e}")))?;
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            for fd in received {
                // SAFETY: the kernel installed `fd` in this process for this message just now
                // (SCM_RIGHTS); nothing else knows its number. The OwnedFd takes ownership and
                // closes it on drop.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(msg.bytes)
}
