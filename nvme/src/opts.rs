//! What an attach names (a transport id) and asks for (options), and the module-wide options of
//! `bdev_nvme_set_options`. Plain data, checked by [`AttachOpts::check`]; any thread.

use std::net::{SocketAddr, ToSocketAddrs};

use serde_json::{json, Value};

use crate::NvmeError;

/// A transport type as SPDK spells it (`trtype`, case-insensitive on input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrType {
    /// NVMe over TCP.
    Tcp,
    /// A local PCIe controller (keel-nvme-pcie; not yet plugged in).
    Pcie,
}

impl TrType {
    /// Parses `trtype`.
    pub fn parse(s: &str) -> Result<TrType, NvmeError> {
        if s.eq_ignore_ascii_case("tcp") {
            Ok(TrType::Tcp)
        } else if s.eq_ignore_ascii_case("pcie") {
            Ok(TrType::Pcie)
        } else {
            Err(NvmeError::Invalid(format!("Transport type '{s}' unsupported")))
        }
    }

    /// SPDK's spelling in results and save_config.
    pub fn as_str(self) -> &'static str {
        match self {
            TrType::Tcp => "TCP",
            TrType::Pcie => "PCIe",
        }
    }
}

/// Where the controller is: SPDK's transport id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportId {
    /// The transport.
    pub trtype: TrType,
    /// `IPv4` / `IPv6` (TCP).
    pub adrfam: String,
    /// The address (TCP: an IP address or host name).
    pub traddr: String,
    /// The service (TCP: the port, a string as in SPDK).
    pub trsvcid: String,
    /// The subsystem NQN.
    pub subnqn: String,
}

impl TransportId {
    /// The socket address of a TCP transport id.
    pub fn socket_addr(&self) -> Result<SocketAddr, NvmeError> {
        let port: u16 = self
            .trsvcid
            .parse()
            .map_err(|_| NvmeError::Invalid(format!("trsvcid '{}' is not a port number", self.trsvcid)))?;
        (self.traddr.as_str(), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| NvmeError::Invalid(format!("traddr '{}' is not an address", self.traddr)))
    }

    /// `trid` of bdev_nvme_get_controllers.
    pub fn to_json(&self) -> Value {
        if self.trtype == TrType::Pcie {
            // SPDK writes only the fields that are set: a PCIe trid is its type and address.
            return json!({"trtype": self.trtype.as_str(), "traddr": self.traddr});
        }
        json!({
            "trtype": self.trtype.as_str(),
            "adrfam": self.adrfam,
            "traddr": self.traddr,
            "trsvcid": self.trsvcid,
            "subnqn": self.subnqn,
        })
    }
}

/// The default host NQN when the attach names none (SPDK derives one from a UUID).
pub const DEFAULT_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:6b65656c-0000-4000-8000-000000000001";

/// What one `bdev_nvme_attach_controller` asks for.
#[derive(Debug, Clone)]
pub struct AttachOpts {
    /// Controller name; namespace bdevs are `{name}n{nsid}`.
    pub name: String,
    /// Where.
    pub trid: TransportId,
    /// The host NQN to connect as.
    pub hostnqn: String,
    /// Header digest asked for.
    pub hdgst: bool,
    /// Data digest asked for.
    pub ddgst: bool,
    /// Most I/O queues (one per reactor that does I/O, at most this many).
    pub num_io_queues: u32,
    /// Entries per I/O queue.
    pub io_queue_depth: u16,
    /// Seconds of failure after which the controller is deleted; -1 = never; 0 = at once.
    pub ctrlr_loss_timeout_sec: i64,
    /// Seconds between reconnect attempts.
    pub reconnect_delay_sec: u64,
    /// Seconds of failure after which I/O fails instead of waiting (0 = wait until loss).
    pub fast_io_fail_timeout_sec: u64,
    /// Keep-alive timeout asked for at Connect, ms (0 = none).
    pub keep_alive_timeout_ms: u32,
}

impl AttachOpts {
    /// SPDK's rules for the reconnect options (`bdev_nvme_check_io_error_resiliency_params`).
    pub fn check(&self) -> Result<(), NvmeError> {
        let bad = |m: &str| Err(NvmeError::Invalid(m.to_string()));
        if self.name.is_empty() {
            return bad("name must not be empty");
        }
        let loss = self.ctrlr_loss_timeout_sec;
        let delay = self.reconnect_delay_sec as i64;
        let fail = self.fast_io_fail_timeout_sec as i64;
        if loss < -1 {
            return bad("ctrlr_loss_timeout_sec can't be less than -1");
        }
        if loss == 0 {
            if delay != 0 || fail != 0 {
                return bad(
                    "Both reconnect_delay_sec and fast_io_fail_timeout_sec must be 0 if ctrlr_loss_timeout_sec is 0",
                );
            }
        } else {
            if delay == 0 {
                return bad("reconnect_delay_sec can't be 0 if ctrlr_loss_timeout_sec is not 0");
            }
            if loss != -1 && delay > loss {
                return bad("reconnect_delay_sec can't be more than ctrlr_loss_timeout_sec");
            }
            if fail != 0 {
                if loss != -1 && fail > loss {
                    return bad("fast_io_fail_timeout_sec can't be more than ctrlr_loss_timeout_sec");
                }
                if delay > fail {
                    return bad("reconnect_delay_sec can't be more than fast_io_fail_timeout_sec");
                }
            }
        }
        if self.num_io_queues == 0 {
            return bad("num_io_queues must be at least 1");
        }
        if self.io_queue_depth < 2 {
            return bad("io_queue_depth must be at least 2");
        }
        Ok(())
    }
}

/// The module options of `bdev_nvme_set_options` that Keel uses (the defaults of attaches);
/// the others are accepted and kept for save_config.
#[derive(Debug, Clone)]
pub struct ModuleOpts {
    /// Keep-alive timeout, ms.
    pub keep_alive_timeout_ms: u32,
    /// Default ctrlr_loss_timeout_sec of attaches.
    pub ctrlr_loss_timeout_sec: i64,
    /// Default reconnect_delay_sec of attaches.
    pub reconnect_delay_sec: u64,
    /// Default fast_io_fail_timeout_sec of attaches.
    pub fast_io_fail_timeout_sec: u64,
    /// I/O queue entries (SPDK's io_queue_requests 0 = the driver's default).
    pub io_queue_requests: u32,
    /// Accepted and saved options the fabrics transport does not act on (name → value);
    /// PCIe controllers use `timeout_us` and `action_on_timeout` from here.
    pub other: serde_json::Map<String, Value>,
}

impl Default for ModuleOpts {
    fn default() -> Self {
        ModuleOpts {
            keep_alive_timeout_ms: 10_000,
            ctrlr_loss_timeout_sec: 0,
            reconnect_delay_sec: 0,
            fast_io_fail_timeout_sec: 0,
            io_queue_requests: 0,
            other: serde_json::Map::new(),
        }
    }
}

impl ModuleOpts {
    /// The I/O queue depth attaches use.
    pub fn io_queue_depth(&self) -> u16 {
        match self.io_queue_requests {
            0 => 128,
            n => n.clamp(2, 1024) as u16,
        }
    }

    /// The params of save_config's `bdev_nvme_set_options`, SPDK's keys.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        let defaults = [
            ("action_on_timeout", json!("none")),
            ("timeout_us", json!(0)),
            ("timeout_admin_us", json!(0)),
            ("keep_alive_timeout_ms", json!(self.keep_alive_timeout_ms)),
            ("arbitration_burst", json!(0)),
            ("low_priority_weight", json!(0)),
            ("medium_priority_weight", json!(0)),
            ("high_priority_weight", json!(0)),
            ("nvme_adminq_poll_period_us", json!(10000)),
            ("nvme_ioq_poll_period_us", json!(0)),
            ("io_queue_requests", json!(self.io_queue_requests)),
            ("delay_cmd_submit", json!(true)),
            ("transport_retry_count", json!(4)),
            ("bdev_retry_count", json!(3)),
            ("transport_ack_timeout", json!(0)),
            ("ctrlr_loss_timeout_sec", json!(self.ctrlr_loss_timeout_sec)),
            ("reconnect_delay_sec", json!(self.reconnect_delay_sec)),
            ("fast_io_fail_timeout_sec", json!(self.fast_io_fail_timeout_sec)),
            ("disable_auto_failback", json!(false)),
            ("generate_uuids", json!(false)),
            ("transport_tos", json!(0)),
            ("nvme_error_stat", json!(false)),
            ("io_path_stat", json!(false)),
            ("allow_accel_sequence", json!(false)),
        ];
        for (k, v) in defaults {
            m.insert(k.to_string(), v);
        }
        for (k, v) in &self.other {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(loss: i64, delay: u64, fail: u64) -> AttachOpts {
        AttachOpts {
            name: "Nvme0".into(),
            trid: TransportId {
                trtype: TrType::Tcp,
                adrfam: "IPv4".into(),
                traddr: "127.0.0.1".into(),
                trsvcid: "4420".into(),
                subnqn: "nqn.x".into(),
            },
            hostnqn: DEFAULT_HOSTNQN.into(),
            hdgst: false,
            ddgst: false,
            num_io_queues: 4,
            io_queue_depth: 128,
            ctrlr_loss_timeout_sec: loss,
            reconnect_delay_sec: delay,
            fast_io_fail_timeout_sec: fail,
            keep_alive_timeout_ms: 10_000,
        }
    }

    #[test]
    fn reconnect_options_follow_spdk_rules() {
        assert!(opts(0, 0, 0).check().is_ok());
        assert!(opts(-1, 1, 0).check().is_ok());
        assert!(opts(10, 2, 5).check().is_ok());
        assert!(opts(-2, 1, 0).check().is_err());
        assert!(opts(0, 1, 0).check().is_err());
        assert!(opts(10, 0, 0).check().is_err());
        assert!(opts(10, 11, 0).check().is_err());
        assert!(opts(10, 2, 11).check().is_err());
        assert!(opts(10, 5, 2).check().is_err());
    }

    #[test]
    fn trtype_parse() {
        assert_eq!(TrType::parse("tcp").unwrap(), TrType::Tcp);
        assert_eq!(TrType::parse("PCIe").unwrap(), TrType::Pcie);
        assert!(TrType::parse("rdma").is_err());
    }
}
