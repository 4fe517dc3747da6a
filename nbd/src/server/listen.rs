//! Where the server listens: `HOST:PORT` (TCP, port 10809 when omitted) or `unix:/path`, parsed
//! into a [`ListenAddr`], bound into a non-blocking [`ListenSock`] whose `accept` the listener
//! poller on the main reactor calls.
//!
//! Control path (bind on the main core, accept from its poller); the socket is owned by the
//! listener's record in the server.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use crate::consts::DEFAULT_PORT;
use crate::error::NbdError;
use crate::server::sock::Stream;

/// A listen address as given to `nbd_server_start` (after name resolution).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

impl ListenAddr {
    /// Parses `HOST:PORT`, `HOST` (port 10809), `[IPv6]:PORT`, a bare IPv6 address, or
    /// `unix:/absolute/path`. Host names are resolved here (first address wins), so call it on
    /// the control path.
    pub fn parse(text: &str) -> Result<ListenAddr, NbdError> {
        let bad = |why: &str| NbdError::invalid("listen", format!("'{text}': {why}"));
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            if path.len() > 107 {
                return Err(bad("socket path longer than 107 bytes"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if text.is_empty() {
            return Err(bad("empty address"));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(ListenAddr::Tcp(SocketAddr::new(ip, DEFAULT_PORT)));
        }
        if let Ok(sa) = text.parse::<SocketAddr>() {
            return Ok(ListenAddr::Tcp(sa));
        }
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| bad("port is not a number from 0 to 65535"))?;
                (h, port)
            }
            Some(_) => return Err(bad("not an address (IPv6 addresses with a port go in brackets)")),
            None => (text, DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve host: {e}")))?
            .next()
            .ok_or_else(|| bad("the host name has no address"))?;
        Ok(ListenAddr::Tcp(addr))
    }

    /// The canonical text (`IP:PORT` or `unix:/path`): what `save_config` records and what
    /// `nbd_server_stop` matches.
    pub fn text(&self) -> String {
        match self {
            ListenAddr::Tcp(a) => a.to_string(),
            ListenAddr::Unix(p) => format!("unix:{}", p.display()),
        }
    }
}

/// A bound, listening, non-blocking socket. Dropping it closes it and removes a Unix socket's
/// file.
#[derive(Debug)]
pub enum ListenSock {
    /// TCP.
    Tcp(TcpListener),
    /// Unix domain (the path is removed on drop).
    Unix(UnixListener, PathBuf),
}

impl ListenSock {
    /// Binds `addr`. A Unix path left behind by a dead process (nothing accepts on it) is
    /// replaced; one a live process listens on is `EADDRINUSE`. TCP sockets get `SO_REUSEADDR`
    /// (std's default), so a target restarted at once rebinds its port.
    pub fn bind(addr: &ListenAddr) -> Result<(ListenSock, ListenAddr), NbdError> {
        let what = || format!("cannot listen on {}", addr.text());
        match addr {
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a).map_err(|e| NbdError::os(what(), &e))?;
                l.set_nonblocking(true).map_err(|e| NbdError::os(what(), &e))?;
                let bound = l.local_addr().map_err(|e| NbdError::os(what(), &e))?;
                Ok((ListenSock::Tcp(l), ListenAddr::Tcp(bound)))
            }
            ListenAddr::Unix(p) => {
                if std::fs::symlink_metadata(p).is_ok() {
                    match UnixStream::connect(p) {
                        Ok(_) => {
                            return Err(NbdError::os(what(), &io::Error::from_raw_os_error(libc::EADDRINUSE)));
                        }
                        Err(_) => {
                            // A stale socket (or another file): only a socket is replaced.
                            use std::os::unix::fs::FileTypeExt;
                            let is_socket = std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket());
                            if !is_socket {
                                return Err(NbdError::os(what(), &io::Error::from_raw_os_error(libc::EADDRINUSE)));
                            }
                            let _ = std::fs::remove_file(p);
                        }
                    }
                }
                let l = UnixListener::bind(p).map_err(|e| NbdError::os(what(), &e))?;
                l.set_nonblocking(true).map_err(|e| NbdError::os(what(), &e))?;
                Ok((ListenSock::Unix(l, p.clone()), addr.clone()))
            }
        }
    }

    /// Accepts one pending connection: `Ok(None)` when none is waiting. The stream is not yet
    /// prepared ([`Stream::prepare`]).
    pub fn accept(&self) -> io::Result<Option<Stream>> {
        let r = match self {
            ListenSock::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            ListenSock::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        match r {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Drop for ListenSock {
    fn drop(&mut self) {
        if let ListenSock::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_the_default_port() {
        let tcp = |s: &str| match ListenAddr::parse(s).unwrap() {
            ListenAddr::Tcp(a) => a.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(tcp("127.0.0.1:1234"), "127.0.0.1:1234");
        assert_eq!(tcp("127.0.0.1"), "127.0.0.1:10809");
        assert_eq!(tcp("[::1]:99"), "[::1]:99");
        assert_eq!(tcp("::1"), "[::1]:10809");
        assert_eq!(tcp("localhost:7").rsplit_once(':').unwrap().1, "7");
        assert_eq!(
            ListenAddr::parse("unix:/tmp/x.sock").unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            ListenAddr::parse("unix:/tmp/x.sock").unwrap().text(),
            "unix:/tmp/x.sock"
        );
        for bad in ["", "unix:", "127.0.0.1:70000", ":5", "1:2:3", "host:port"] {
            let e = ListenAddr::parse(bad).unwrap_err();
            assert_eq!(e.errno(), -22, "{bad}: {e}");
        }
    }

    #[test]
    fn stale_unix_sockets_are_replaced_live_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.sock");
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        // The file stays behind (std does not unlink): stale, so it is replaced.
        assert!(p.exists());
        let (live, _) = ListenSock::bind(&ListenAddr::Unix(p.clone())).unwrap();
        let e = ListenSock::bind(&ListenAddr::Unix(p.clone())).unwrap_err();
        assert_eq!(e.errno(), -libc::EADDRINUSE, "{e}");
        drop(live);
        assert!(!p.exists(), "the socket file goes with the listener");
        let plain = dir.path().join("file");
        std::fs::write(&plain, b"x").unwrap();
        assert!(ListenSock::bind(&ListenAddr::Unix(plain.clone())).is_err());
        assert!(plain.exists(), "a regular file is never removed");
    }
}
