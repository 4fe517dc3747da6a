//! A server connection on the deterministic driver and a client on the same thread: the
//! client's end of a socketpair whose blocking-looking reads and writes turn the reactors while
//! they wait, so [`keel_nbd::client::BlockingClient`] can drive the server's real connection
//! code without threads.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use keel_nbd::server::sock::Stream;
use keel_nbd::NbdServer;
use keel_reactor::{CoreId, TestDriver};

/// The client's end (see the module doc).
pub struct Pipe<'a> {
    pub d: &'a TestDriver,
    pub s: UnixStream,
    /// Driver turns a read or write may wait before it fails with `TimedOut`.
    pub patience: u64,
}

impl<'a> Pipe<'a> {
    /// A connection of `server` on core 0, negotiation first (`negotiate`) or started in
    /// transmission on `export` with simple replies.
    pub fn connect(d: &'a TestDriver, server: &NbdServer, negotiate: bool, export: &str) -> Pipe<'a> {
        let (c, s) = UnixStream::pair().unwrap();
        c.set_nonblocking(true).unwrap();
        d.enter(CoreId(0), || {
            if negotiate {
                server.serve(Stream::Unix(s), "pipe", CoreId(0)).unwrap();
            } else {
                server
                    .serve_transmission(Stream::Unix(s), export, "pipe", CoreId(0))
                    .unwrap();
            }
        });
        Pipe {
            d,
            s: c,
            patience: 1_000_000,
        }
    }

    /// Turns the driver until the server closes the connection (EOF or reset); returns what it
    /// sent until then, `None` if it is still open after `rounds` turns.
    pub fn read_until_closed(&mut self, rounds: u64) -> Option<Vec<u8>> {
        let mut b = [0u8; 65536];
        let mut got = Vec::new();
        for _ in 0..rounds {
            match self.s.read(&mut b) {
                Ok(0) => return Some(got),
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.d.turn();
                }
                Err(_) => return Some(got),
            }
        }
        None
    }

    /// Whether the server closes the connection within `rounds` turns.
    pub fn closed_within(&mut self, rounds: u64) -> bool {
        self.read_until_closed(rounds).is_some()
    }
}

impl Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for _ in 0..self.patience {
            match self.s.read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.d.turn();
                }
                r => return r,
            }
        }
        Err(ErrorKind::TimedOut.into())
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for _ in 0..self.patience {
            match self.s.write(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.d.turn();
                }
                r => return r,
            }
        }
        Err(ErrorKind::TimedOut.into())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
