//! The byte streams a connection runs over: a TCP or a Unix-domain stream socket (accepted by a
//! listener, or one end of a socketpair handed in by whoever attaches a kernel client), always
//! non-blocking.
//!
//! Reads and writes are `readv`/`writev` through std's vectored I/O, so a WRITE payload lands in
//! the pool buffer it is submitted from and a READ reply leaves from the buffer the bdev filled,
//! header and data in one call. Owned by the connection on its reactor.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;

/// The send buffer a connection asks for (the kernel caps it at `net.core.wmem_max`): room for a
/// few large READ replies, so a `writev` of one rarely stops short and the reactor does not come
/// back to it turn after turn while the client drains a 200 KiB default buffer.
pub const SEND_BUFFER_BYTES: usize = 4 << 20;

/// A connected, non-blocking stream socket.
#[derive(Debug)]
pub enum Stream {
    /// TCP (`TCP_NODELAY` set).
    Tcp(TcpStream),
    /// Unix domain, from a listener or a socketpair.
    Unix(UnixStream),
}

impl Stream {
    /// Makes the socket non-blocking, sets `TCP_NODELAY` on TCP (replies must not wait for
    /// Nagle) and asks for a [`SEND_BUFFER_BYTES`] send buffer. Called once when the connection
    /// is set up, on any thread.
    pub fn prepare(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => {
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                let _ = rustix::net::sockopt::set_socket_send_buffer_size(s, SEND_BUFFER_BYTES);
            }
            Stream::Unix(s) => {
                s.set_nonblocking(true)?;
                let _ = rustix::net::sockopt::set_socket_send_buffer_size(s, SEND_BUFFER_BYTES);
            }
        }
        Ok(())
    }

    /// `read`; `WouldBlock` when nothing is buffered.
    #[inline]
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    /// `readv`; `WouldBlock` when nothing is buffered.
    #[inline]
    pub fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_vectored(bufs),
            Stream::Unix(s) => s.read_vectored(bufs),
        }
    }

    /// `writev`; `WouldBlock` when the socket's send buffer is full.
    #[inline]
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    /// Shuts both directions down (the peer sees EOF at once, even if a clone of the descriptor
    /// is still open somewhere). Errors are of no interest: the socket is going away.
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    /// The peer's address as `get_exports` shows it: `IP:PORT` for TCP; for Unix sockets (whose
    /// clients are anonymous) `unix`.
    pub fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "tcp".into()),
            Stream::Unix(_) => "unix".into(),
        }
    }
}

/// Whether an I/O error only means "not now" (retry at the next poll).
#[inline]
pub fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}
