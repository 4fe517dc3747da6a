//! What the RPC methods configure, as plain values: the TCP transport's options, listen
//! addresses, subsystem and namespace options. Built by the RPC layer on the main core and
//! copied into the target's state; nothing here does I/O.

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use crate::error::NvmfError;

/// The TCP transport's options (`nvmf_create_transport -t TCP`), with SPDK's TCP defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportOpts {
    /// Most commands outstanding per I/O queue (the largest SQSIZE + 1 accepted; CAP.MQES + 1).
    pub max_queue_depth: u16,
    /// Most I/O queues per controller (Set Features Number of Queues answers this).
    pub max_io_qpairs_per_ctrlr: u16,
    /// In-capsule data bytes accepted on I/O queues (IOCCSZ = 4 + this / 16).
    pub in_capsule_data_size: u32,
    /// Largest transfer of one command: MDTS and the ICResp's MAXH2CDATA.
    pub max_io_size: u32,
    /// Accepted and reported (SPDK's buffer unit); Keel's buffers come from the reactor pools.
    pub io_unit_size: u32,
    /// Most commands outstanding on an admin queue.
    pub max_aq_depth: u16,
    /// Accepted and reported (SPDK's shared buffer pool size).
    pub num_shared_buffers: u32,
    /// Accepted and reported.
    pub buf_cache_size: u32,
    /// The last C2HData of a read carries SUCCESS (no CapsuleResp) when the host disabled SQ
    /// flow control.
    pub c2h_success: bool,
    /// Accepted and reported.
    pub sock_priority: u32,
    /// Accepted and reported.
    pub abort_timeout_sec: u32,
}

impl Default for TransportOpts {
    fn default() -> Self {
        TransportOpts {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 128,
            num_shared_buffers: 511,
            buf_cache_size: u32::MAX,
            c2h_success: true,
            sock_priority: 0,
            abort_timeout_sec: 1,
        }
    }
}

impl TransportOpts {
    /// Checks the combination: a queue depth of 2..=1024, at least one I/O queue, an in-capsule
    /// size that is a multiple of 16 up to 128 KiB, a max_io_size that is a multiple of 4 KiB
    /// from 4 KiB to 4 MiB.
    pub fn validate(&self) -> Result<(), NvmfError> {
        if !(2..=1024).contains(&self.max_queue_depth) {
            return Err(NvmfError::invalid(format!(
                "max_queue_depth {} is not in 2..=1024",
                self.max_queue_depth
            )));
        }
        if !(2..=1024).contains(&self.max_aq_depth) {
            return Err(NvmfError::invalid(format!(
                "max_aq_depth {} is not in 2..=1024",
                self.max_aq_depth
            )));
        }
        if self.max_io_qpairs_per_ctrlr == 0 {
            return Err(NvmfError::invalid("max_io_qpairs_per_ctrlr must be at least 1"));
        }
        if !self.in_capsule_data_size.is_multiple_of(16) || self.in_capsule_data_size > 131072 {
            return Err(NvmfError::invalid(format!(
                "in_capsule_data_size {} is not a multiple of 16 up to 131072",
                self.in_capsule_data_size
            )));
        }
        if !self.max_io_size.is_multiple_of(4096) || !(4096..=4 << 20).contains(&self.max_io_size) {
            return Err(NvmfError::invalid(format!(
                "max_io_size {} is not a multiple of 4096 from 4096 to 4194304",
                self.max_io_size
            )));
        }
        Ok(())
    }

    /// MDTS in units of the 4 KiB minimum page: log2(max_io_size / 4096).
    pub fn mdts(&self) -> u8 {
        (self.max_io_size / 4096).max(1).ilog2() as u8
    }

    /// The largest transfer MDTS allows (max_io_size rounded down to a power of two pages).
    pub fn max_transfer_bytes(&self) -> u32 {
        4096u32 << self.mdts()
    }

    /// `nvmf_get_transports`' object (and save_config's params, without the result-only keys).
    pub fn to_json(&self) -> Value {
        json!({
            "trtype": "TCP",
            "max_queue_depth": self.max_queue_depth,
            "max_io_qpairs_per_ctrlr": self.max_io_qpairs_per_ctrlr,
            "in_capsule_data_size": self.in_capsule_data_size,
            "max_io_size": self.max_io_size,
            "io_unit_size": self.io_unit_size,
            "max_aq_depth": self.max_aq_depth,
            "num_shared_buffers": self.num_shared_buffers,
            "buf_cache_size": self.buf_cache_size,
            "c2h_success": self.c2h_success,
            "sock_priority": self.sock_priority,
            "abort_timeout_sec": self.abort_timeout_sec,
        })
    }
}

/// A listen address as `listen_address` gives it: `{trtype, adrfam, traddr, trsvcid}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListenAddress {
    /// The address, as given (an IPv4 or IPv6 literal).
    pub traddr: String,
    /// The port, as text.
    pub trsvcid: String,
    /// `IPv4` or `IPv6` (from the address when not given).
    pub adrfam: String,
}

impl ListenAddress {
    /// Checks `trtype` (TCP only), parses the address and port. Host names are not resolved:
    /// SPDK's TCP transport takes literals.
    pub fn parse(trtype: &str, adrfam: Option<&str>, traddr: &str, trsvcid: Option<&str>) -> Result<Self, NvmfError> {
        if !trtype.eq_ignore_ascii_case("tcp") {
            return Err(NvmfError::invalid(format!(
                "transport type '{trtype}' is not served (only TCP)"
            )));
        }
        let ip: IpAddr = traddr
            .parse()
            .map_err(|_| NvmfError::invalid(format!("traddr '{traddr}' is not an IP address")))?;
        let fam = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        if let Some(a) = adrfam {
            if !a.eq_ignore_ascii_case(fam) {
                return Err(NvmfError::invalid(format!(
                    "adrfam '{a}' does not match traddr '{traddr}'"
                )));
            }
        }
        let svc = trsvcid.unwrap_or("4420");
        let port: u16 = svc
            .parse()
            .map_err(|_| NvmfError::invalid(format!("trsvcid '{svc}' is not a port number")))?;
        Ok(ListenAddress {
            traddr: traddr.to_string(),
            trsvcid: port.to_string(),
            adrfam: fam.to_string(),
        })
    }

    /// The socket address to bind.
    pub fn socket_addr(&self) -> SocketAddr {
        let ip: IpAddr = self.traddr.parse().expect("checked by parse");
        SocketAddr::new(ip, self.trsvcid.parse().expect("checked by parse"))
    }

    /// `{trtype, adrfam, traddr, trsvcid}` as SPDK lists it.
    pub fn to_json(&self) -> Value {
        json!({"trtype": "TCP", "adrfam": self.adrfam, "traddr": self.traddr, "trsvcid": self.trsvcid})
    }
}

/// `nvmf_create_subsystem`'s options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemOpts {
    /// Serial number (at most 20 printable ASCII characters).
    pub serial_number: String,
    /// Model number (at most 40 printable ASCII characters).
    pub model_number: String,
    /// Any host may connect (else only the added hosts).
    pub allow_any_host: bool,
    /// Most namespaces (0: SPDK's default of 32).
    pub max_namespaces: u32,
    /// Lowest controller id handed out.
    pub min_cntlid: u16,
    /// Highest controller id handed out.
    pub max_cntlid: u16,
}

impl Default for SubsystemOpts {
    fn default() -> Self {
        SubsystemOpts {
            serial_number: "00000000000000000000".into(),
            model_number: "SPDK bdev Controller".into(),
            allow_any_host: false,
            max_namespaces: 32,
            min_cntlid: 1,
            max_cntlid: 0xFFEF,
        }
    }
}

impl SubsystemOpts {
    /// Checks the text fields and the controller id range.
    pub fn validate(&self) -> Result<(), NvmfError> {
        let printable = |s: &str| s.bytes().all(|b| (0x20..0x7F).contains(&b));
        if self.serial_number.is_empty() || self.serial_number.len() > 20 || !printable(&self.serial_number) {
            return Err(NvmfError::invalid(format!("Invalid SN {}", self.serial_number)));
        }
        if self.model_number.is_empty() || self.model_number.len() > 40 || !printable(&self.model_number) {
            return Err(NvmfError::invalid(format!("Invalid MN {}", self.model_number)));
        }
        if self.min_cntlid == 0 || self.min_cntlid > self.max_cntlid || self.max_cntlid > 0xFFEF {
            return Err(NvmfError::invalid(format!(
                "controller id range {}..={} is not within 1..=65519",
                self.min_cntlid, self.max_cntlid
            )));
        }
        if self.max_namespaces > 1024 {
            return Err(NvmfError::invalid(format!(
                "max_namespaces {} is over 1024",
                self.max_namespaces
            )));
        }
        Ok(())
    }
}

/// `nvmf_subsystem_add_ns`'s namespace object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NsOpts {
    /// The bdev to serve.
    pub bdev_name: String,
    /// The NSID (0: the lowest free one).
    pub nsid: u32,
    /// NGUID (default: the UUID's bytes).
    pub nguid: Option<[u8; 16]>,
    /// EUI-64 (default: none).
    pub eui64: Option<[u8; 8]>,
    /// UUID (default: the bdev's).
    pub uuid: Option<uuid::Uuid>,
}

/// Parses `n` hex digits (dashes ignored, as SPDK does) into bytes.
pub fn parse_hex<const N: usize>(field: &str, text: &str) -> Result<[u8; N], NvmfError> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    let bad = || NvmfError::invalid(format!("{field} '{text}' is not {} hex digits", N * 2));
    if digits.len() != N * 2 {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Upper-case hex, as SPDK prints NGUIDs and EUI-64s.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_mdts() {
        let t = TransportOpts::default();
        t.validate().unwrap();
        assert_eq!(t.mdts(), 5);
        assert_eq!(t.max_transfer_bytes(), 131072);
        let bad = TransportOpts { max_io_size: 1000, ..t };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn listen_addresses() {
        let a = ListenAddress::parse("TCP", None, "127.0.0.1", Some("4420")).unwrap();
        assert_eq!(a.adrfam, "IPv4");
        assert_eq!(a.socket_addr().to_string(), "127.0.0.1:4420");
        assert!(ListenAddress::parse("RDMA", None, "127.0.0.1", None).is_err());
        assert!(ListenAddress::parse("tcp", None, "host", None).is_err());
        assert!(ListenAddress::parse("tcp", Some("IPv6"), "127.0.0.1", None).is_err());
        assert!(ListenAddress::parse("tcp", None, "::1", Some("99999")).is_err());
    }

    #[test]
    fn hex_fields() {
        let g: [u8; 8] = parse_hex("eui64", "0011223344556677").unwrap();
        assert_eq!(hex(&g), "0011223344556677");
        assert!(parse_hex::<8>("eui64", "00112233").is_err());
        assert!(parse_hex::<8>("eui64", "zz11223344556677").is_err());
        let u: [u8; 16] = parse_hex("nguid", "00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(u[15], 0xFF);
    }
}
