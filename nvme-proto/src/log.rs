//! Get Log Page payloads: error information, SMART / health, the changed namespace list and the
//! discovery log.
//!
//! Each page has an encoder into a caller-owned buffer and a decoder. A host may read any
//! dword-aligned window of a page (`nvme discover` reads the 1024-byte discovery header, then the
//! whole log; newer libnvme reads a 20-byte header, then the entries from offset 1024), so the
//! discovery log also has [`read_discovery_log`], which fills exactly the requested window from
//! the header and entries without building the whole page. Layouts: `nvme-tcp.md` §10.5 and §11.

use crate::cqe::Status;
use crate::identify::NsidList;
use crate::nqn::{FixedText, NqnField, NQN_FIELD_LEN};
use crate::wire::{
    array, array_mut, get_bytes, get_u128, get_u16, get_u32, get_u64, get_u8, put_bytes, put_u128, put_u16, put_u32,
    put_u64, put_u8,
};
use crate::ProtoError;

/// Log page identifier (Get Log Page CDW10 7:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogPageId(pub u8);

impl LogPageId {
    /// Error information (64-byte entries).
    pub const ERROR: LogPageId = LogPageId(0x01);
    /// SMART / health information (512 bytes).
    pub const SMART: LogPageId = LogPageId(0x02);
    /// Firmware slot information (512 bytes).
    pub const FIRMWARE_SLOT: LogPageId = LogPageId(0x03);
    /// Changed namespace list (4096 bytes).
    pub const CHANGED_NS_LIST: LogPageId = LogPageId(0x04);
    /// Commands supported and effects (4096 bytes).
    pub const COMMANDS_EFFECTS: LogPageId = LogPageId(0x05);
    /// Asymmetric namespace access.
    pub const ANA: LogPageId = LogPageId(0x0C);
    /// Discovery log (fabrics discovery controllers).
    pub const DISCOVERY: LogPageId = LogPageId(0x70);
}

/// Length of one error information entry.
pub const ERROR_ENTRY_LEN: usize = 64;
/// Length of the SMART / health page.
pub const SMART_LEN: usize = 512;
/// Length of the changed namespace list page.
pub const CHANGED_NS_LIST_LEN: usize = 4096;
/// Most NSIDs the changed namespace list holds before it says "more than this".
pub const CHANGED_NS_LIST_SLOTS: usize = 1024;
/// Length of the discovery log header, and of each discovery log entry.
pub const DISCOVERY_RECORD_LEN: usize = 1024;

// Page sizes from nvme-tcp.md §10.5 and §11.
const _: () = assert!(ERROR_ENTRY_LEN == 64 && SMART_LEN == 512);
const _: () = assert!(CHANGED_NS_LIST_SLOTS * 4 == CHANGED_NS_LIST_LEN && CHANGED_NS_LIST_LEN == 4096);
const _: () = assert!(DISCOVERY_RECORD_LEN == 1024);

/// One error information log entry (LID 01h). Kept by the target per controller, read by hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorInfoEntry {
    /// Error count: a unique, increasing id; 0 marks an unused entry (0).
    pub error_count: u64,
    /// SQ of the failed command (8).
    pub sqid: u16,
    /// CID of the failed command (10).
    pub cid: u16,
    /// Its completion status (12; the phase bit is written as 0).
    pub status: Status,
    /// Byte and bit of the command parameter in error (14).
    pub parameter_error_location: u16,
    /// First LBA in error (16).
    pub lba: u64,
    /// Namespace (24).
    pub nsid: u32,
    /// Vendor specific information available (28).
    pub vendor_info: u8,
    /// Transport type of the transport info (29).
    pub trtype: u8,
    /// Command specific information (32).
    pub command_specific: u64,
    /// Transport type specific information (40).
    pub transport_info: u16,
}

impl ErrorInfoEntry {
    /// Writes the 64-byte entry into `out`; returns 64.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProtoError> {
        const N: usize = ERROR_ENTRY_LEN;
        let b = array_mut::<N>(out, "error information entry")?;
        b.fill(0);
        put_u64::<0, N>(b, self.error_count);
        put_u16::<8, N>(b, self.sqid);
        put_u16::<10, N>(b, self.cid);
        put_u16::<12, N>(b, self.status.to_field(false));
        put_u16::<14, N>(b, self.parameter_error_location);
        put_u64::<16, N>(b, self.lba);
        put_u32::<24, N>(b, self.nsid);
        put_u8::<28, N>(b, self.vendor_info);
        put_u8::<29, N>(b, self.trtype);
        put_u64::<32, N>(b, self.command_specific);
        put_u16::<40, N>(b, self.transport_info);
        Ok(N)
    }

    /// Reads a 64-byte entry.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        const N: usize = ERROR_ENTRY_LEN;
        let b = array::<N>(buf, "error information entry")?;
        Ok(ErrorInfoEntry {
            error_count: get_u64::<0, N>(b),
            sqid: get_u16::<8, N>(b),
            cid: get_u16::<10, N>(b),
            status: Status::from_field(get_u16::<12, N>(b)).0,
            parameter_error_location: get_u16::<14, N>(b),
            lba: get_u64::<16, N>(b),
            nsid: get_u32::<24, N>(b),
            vendor_info: get_u8::<28, N>(b),
            trtype: get_u8::<29, N>(b),
            command_specific: get_u64::<32, N>(b),
            transport_info: get_u16::<40, N>(b),
        })
    }
}

/// SMART / health information (LID 02h, 512 bytes). The counters are 128-bit on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmartLog {
    /// Critical warning bits (0).
    pub critical_warning: u8,
    /// Composite temperature in kelvin (1).
    pub composite_temperature_k: u16,
    /// Available spare, percent (3).
    pub available_spare_pct: u8,
    /// Available spare threshold, percent (4).
    pub available_spare_threshold_pct: u8,
    /// Percentage used (5).
    pub percentage_used: u8,
    /// Endurance group critical warning summary (6).
    pub endurance_group_warning: u8,
    /// Data units read, in thousands of 512-byte units (32).
    pub data_units_read: u128,
    /// Data units written, in thousands of 512-byte units (48).
    pub data_units_written: u128,
    /// Host read commands (64).
    pub host_read_commands: u128,
    /// Host write commands (80).
    pub host_write_commands: u128,
    /// Controller busy time, minutes (96).
    pub controller_busy_time_min: u128,
    /// Power cycles (112).
    pub power_cycles: u128,
    /// Power on hours (128).
    pub power_on_hours: u128,
    /// Unsafe shutdowns (144).
    pub unsafe_shutdowns: u128,
    /// Media and data integrity errors (160).
    pub media_errors: u128,
    /// Error information log entries over the life of the controller (176).
    pub error_log_entries: u128,
    /// Warning composite temperature time, minutes (192).
    pub warning_temperature_time_min: u32,
    /// Critical composite temperature time, minutes (196).
    pub critical_temperature_time_min: u32,
    /// Temperature sensors 1–8 in kelvin (200..216).
    pub temperature_sensors_k: [u16; 8],
}

impl SmartLog {
    /// Writes the 512-byte page into `out`; returns 512.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProtoError> {
        const N: usize = SMART_LEN;
        let b = array_mut::<N>(out, "SMART log")?;
        b.fill(0);
        put_u8::<0, N>(b, self.critical_warning);
        put_u16::<1, N>(b, self.composite_temperature_k);
        put_u8::<3, N>(b, self.available_spare_pct);
        put_u8::<4, N>(b, self.available_spare_threshold_pct);
        put_u8::<5, N>(b, self.percentage_used);
        put_u8::<6, N>(b, self.endurance_group_warning);
        put_u128::<32, N>(b, self.data_units_read);
        put_u128::<48, N>(b, self.data_units_written);
        put_u128::<64, N>(b, self.host_read_commands);
        put_u128::<80, N>(b, self.host_write_commands);
        put_u128::<96, N>(b, self.controller_busy_time_min);
        put_u128::<112, N>(b, self.power_cycles);
        put_u128::<128, N>(b, self.power_on_hours);
        put_u128::<144, N>(b, self.unsafe_shutdowns);
        put_u128::<160, N>(b, self.media_errors);
        put_u128::<176, N>(b, self.error_log_entries);
        put_u32::<192, N>(b, self.warning_temperature_time_min);
        put_u32::<196, N>(b, self.critical_temperature_time_min);
        let mut sensors = [0u8; 16];
        for (t, s) in self.temperature_sensors_k.iter().zip(sensors.chunks_exact_mut(2)) {
            s.copy_from_slice(&t.to_le_bytes());
        }
        put_bytes::<200, 16, N>(b, &sensors);
        Ok(N)
    }

    /// Reads the 512-byte page.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        const N: usize = SMART_LEN;
        let b = array::<N>(buf, "SMART log")?;
        let raw = get_bytes::<200, 16, N>(b);
        let temperature_sensors_k = std::array::from_fn(|i| u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]));
        Ok(SmartLog {
            critical_warning: get_u8::<0, N>(b),
            composite_temperature_k: get_u16::<1, N>(b),
            available_spare_pct: get_u8::<3, N>(b),
            available_spare_threshold_pct: get_u8::<4, N>(b),
            percentage_used: get_u8::<5, N>(b),
            endurance_group_warning: get_u8::<6, N>(b),
            data_units_read: get_u128::<32, N>(b),
            data_units_written: get_u128::<48, N>(b),
            host_read_commands: get_u128::<64, N>(b),
            host_write_commands: get_u128::<80, N>(b),
            controller_busy_time_min: get_u128::<96, N>(b),
            power_cycles: get_u128::<112, N>(b),
            power_on_hours: get_u128::<128, N>(b),
            unsafe_shutdowns: get_u128::<144, N>(b),
            media_errors: get_u128::<160, N>(b),
            error_log_entries: get_u128::<176, N>(b),
            warning_temperature_time_min: get_u32::<192, N>(b),
            critical_temperature_time_min: get_u32::<196, N>(b),
            temperature_sensors_k,
        })
    }
}

/// What a changed namespace list page says.
#[derive(Debug, Clone)]
pub enum ChangedNamespaces<'a> {
    /// These NSIDs changed (read in place from the caller's buffer).
    List(NsidList<'a>),
    /// More than 1024 namespaces changed (entry 0 is FFFFFFFFh): rescan everything.
    TooMany,
}

/// Writes the changed namespace list (LID 04h) into the 4096 bytes at `out`: the NSIDs of
/// `changed`, or FFFFFFFFh alone if there are more than 1024; zeros after. Returns 4096.
pub fn encode_changed_ns_list(changed: &[u32], out: &mut [u8]) -> Result<usize, ProtoError> {
    let b = array_mut::<CHANGED_NS_LIST_LEN>(out, "changed namespace list")?;
    b.fill(0);
    if changed.len() > CHANGED_NS_LIST_SLOTS {
        put_u32::<0, CHANGED_NS_LIST_LEN>(b, u32::MAX);
    } else {
        for (nsid, slot) in changed.iter().zip(b.chunks_exact_mut(4)) {
            slot.copy_from_slice(&nsid.to_le_bytes());
        }
    }
    Ok(CHANGED_NS_LIST_LEN)
}

/// Reads a changed namespace list from `buf` (any whole number of entries; a short read of the
/// page is fine).
pub fn decode_changed_ns_list(buf: &[u8]) -> Result<ChangedNamespaces<'_>, ProtoError> {
    let first = array::<4>(buf, "changed namespace list")?;
    if u32::from_le_bytes(*first) == u32::MAX {
        return Ok(ChangedNamespaces::TooMany);
    }
    Ok(ChangedNamespaces::List(NsidList::new(buf)))
}

/// The discovery log header (the first 1024 bytes of LID 70h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscoveryLogHeader {
    /// Generation counter: changes whenever the log does (0).
    pub genctr: u64,
    /// Number of records (8).
    pub numrec: u64,
    /// Record format, 0 (16).
    pub recfmt: u16,
}

impl DiscoveryLogHeader {
    /// The 1024 bytes of the header.
    pub fn to_bytes(&self) -> [u8; DISCOVERY_RECORD_LEN] {
        const N: usize = DISCOVERY_RECORD_LEN;
        let mut b = [0u8; N];
        put_u64::<0, N>(&mut b, self.genctr);
        put_u64::<8, N>(&mut b, self.numrec);
        put_u16::<16, N>(&mut b, self.recfmt);
        b
    }

    /// Reads the header. Accepts the 20-byte short read newer libnvme makes (GENCTR, NUMREC,
    /// RECFMT are all in the first 18 bytes).
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let b = array::<18>(buf, "discovery log header")?;
        Ok(DiscoveryLogHeader {
            genctr: get_u64::<0, 18>(b),
            numrec: get_u64::<8, 18>(b),
            recfmt: get_u16::<16, 18>(b),
        })
    }
}

/// One discovery log entry (1024 bytes at 1024 × (n + 1)). Built by the target's discovery
/// controller per listener and subsystem; decoded by the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport type (0): 3 TCP.
    pub trtype: u8,
    /// Address family (1): 1 IPv4, 2 IPv6.
    pub adrfam: u8,
    /// Subsystem type (2): 2 NVM subsystem, 3 current discovery subsystem.
    pub subtype: u8,
    /// Transport requirements (3): bits 1:0 secure channel, bit 2 SQ flow control disable OK.
    pub treq: u8,
    /// Port id (4).
    pub portid: u16,
    /// Controller id, FFFFh for the dynamic model (6).
    pub cntlid: u16,
    /// Admin max SQ size (8).
    pub asqsz: u16,
    /// Entry flags (10).
    pub eflags: u16,
    /// Transport service id: the TCP port as text (32).
    pub trsvcid: FixedText<32>,
    /// Subsystem NQN (256).
    pub subnqn: NqnField,
    /// Transport address: the IP address as text (512).
    pub traddr: FixedText<256>,
    /// Transport specific address subtype (768); for TCP byte 0 is SECTYPE.
    pub tsas: [u8; 256],
}

impl Default for DiscoveryEntry {
    fn default() -> Self {
        DiscoveryEntry {
            trtype: 0,
            adrfam: 0,
            subtype: 0,
            treq: 0,
            portid: 0,
            cntlid: 0,
            asqsz: 0,
            eflags: 0,
            trsvcid: FixedText::default(),
            subnqn: NqnField::default(),
            traddr: FixedText::default(),
            tsas: [0; 256],
        }
    }
}

impl DiscoveryEntry {
    /// TRTYPE: RDMA.
    pub const TRTYPE_RDMA: u8 = 1;
    /// TRTYPE: Fibre Channel.
    pub const TRTYPE_FC: u8 = 2;
    /// TRTYPE: TCP.
    pub const TRTYPE_TCP: u8 = 3;
    /// ADRFAM: IPv4.
    pub const ADRFAM_IPV4: u8 = 1;
    /// ADRFAM: IPv6.
    pub const ADRFAM_IPV6: u8 = 2;
    /// SUBTYPE: referral to another discovery service.
    pub const SUBTYPE_REFERRAL: u8 = 1;
    /// SUBTYPE: an NVM subsystem.
    pub const SUBTYPE_NVM: u8 = 2;
    /// SUBTYPE: this discovery subsystem.
    pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
    /// TREQ: secure channel not required (bits 1:0 = 10b).
    pub const TREQ_SECURE_CHANNEL_NOT_REQUIRED: u8 = 0x2;
    /// TREQ bit 2: SQ flow control may be disabled.
    pub const TREQ_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;
    /// CNTLID of the dynamic controller model.
    pub const DYNAMIC_CNTLID: u16 = 0xFFFF;

    /// The 1024 bytes of the entry.
    pub fn to_bytes(&self) -> [u8; DISCOVERY_RECORD_LEN] {
        const N: usize = DISCOVERY_RECORD_LEN;
        let mut b = [0u8; N];
        put_u8::<0, N>(&mut b, self.trtype);
        put_u8::<1, N>(&mut b, self.adrfam);
        put_u8::<2, N>(&mut b, self.subtype);
        put_u8::<3, N>(&mut b, self.treq);
        put_u16::<4, N>(&mut b, self.portid);
        put_u16::<6, N>(&mut b, self.cntlid);
        put_u16::<8, N>(&mut b, self.asqsz);
        put_u16::<10, N>(&mut b, self.eflags);
        put_bytes::<32, 32, N>(&mut b, self.trsvcid.raw());
        put_bytes::<256, NQN_FIELD_LEN, N>(&mut b, self.subnqn.raw());
        put_bytes::<512, 256, N>(&mut b, self.traddr.raw());
        put_bytes::<768, 256, N>(&mut b, &self.tsas);
        b
    }

    /// Writes the entry into the first 1024 bytes of `out`; returns 1024.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProtoError> {
        *array_mut::<DISCOVERY_RECORD_LEN>(out, "discovery log entry")? = self.to_bytes();
        Ok(DISCOVERY_RECORD_LEN)
    }

    /// Reads an entry. Any bit pattern decodes; an unterminated SUBNQN is cut at 256 bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        const N: usize = DISCOVERY_RECORD_LEN;
        let b = array::<N>(buf, "discovery log entry")?;
        Ok(DiscoveryEntry {
            trtype: get_u8::<0, N>(b),
            adrfam: get_u8::<1, N>(b),
            subtype: get_u8::<2, N>(b),
            treq: get_u8::<3, N>(b),
            portid: get_u16::<4, N>(b),
            cntlid: get_u16::<6, N>(b),
            asqsz: get_u16::<8, N>(b),
            eflags: get_u16::<10, N>(b),
            trsvcid: FixedText::from_raw(get_bytes::<32, 32, N>(b)),
            subnqn: NqnField::decode_lenient(&get_bytes::<256, NQN_FIELD_LEN, N>(b)),
            traddr: FixedText::from_raw(get_bytes::<512, 256, N>(b)),
            tsas: get_bytes::<768, 256, N>(b),
        })
    }

    /// The TCP security type (TSAS byte 0): 0 none, 1 TLS 1.2, 2 TLS 1.3.
    pub const fn tcp_sectype(&self) -> u8 {
        self.tsas[0]
    }
}

/// Byte offset of discovery log entry `index` in the page.
pub const fn discovery_entry_offset(index: u64) -> u64 {
    DISCOVERY_RECORD_LEN as u64 * (index + 1)
}

/// Fills `out` with bytes `offset_bytes..offset_bytes + out.len()` of the discovery log made of
/// `header` and `entries` (bytes past the last entry are zero). Called by the target's discovery
/// controller for each Get Log Page 70h with the command's offset and data buffer; builds at
/// most one 1024-byte record at a time on the stack, never the whole page. Returns how many bytes
/// of `out` fall inside the log (the rest is zero padding).
pub fn read_discovery_log(
    header: &DiscoveryLogHeader,
    entries: &[DiscoveryEntry],
    offset_bytes: u64,
    out: &mut [u8],
) -> usize {
    out.fill(0);
    let rec = DISCOVERY_RECORD_LEN as u64;
    let log_len = rec * (entries.len() as u64 + 1);
    let end = offset_bytes.saturating_add(out.len() as u64).min(log_len);
    let mut pos = offset_bytes;
    while pos < end {
        let index = pos / rec;
        let record = match index {
            0 => header.to_bytes(),
            n => match entries.get((n - 1) as usize) {
                Some(e) => e.to_bytes(),
                None => break,
            },
        };
        let in_rec = (pos % rec) as usize;
        let take = ((end - pos) as usize).min(DISCOVERY_RECORD_LEN - in_rec);
        let at = (pos - offset_bytes) as usize;
        if let (Some(dst), Some(src)) = (out.get_mut(at..at + take), record.get(in_rec..in_rec + take)) {
            dst.copy_from_slice(src);
        }
        pos += take as u64;
    }
    end.saturating_sub(offset_bytes) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cqe::StatusCode;

    fn tcp_entry() -> DiscoveryEntry {
        // nvme-tcp.md §15 item 7: TRTYPE 3, ADRFAM 1, SUBTYPE 2, CNTLID FFFF, ASQSZ 32.
        DiscoveryEntry {
            trtype: DiscoveryEntry::TRTYPE_TCP,
            adrfam: DiscoveryEntry::ADRFAM_IPV4,
            subtype: DiscoveryEntry::SUBTYPE_NVM,
            treq: DiscoveryEntry::TREQ_DISABLE_SQ_FLOW_CONTROL,
            portid: 1,
            cntlid: DiscoveryEntry::DYNAMIC_CNTLID,
            asqsz: 32,
            eflags: 0,
            trsvcid: FixedText::nul_padded("4420").unwrap(),
            subnqn: NqnField::new("nqn.2016-06.io.spdk:cnode1").unwrap(),
            traddr: FixedText::nul_padded("10.0.2.15").unwrap(),
            tsas: [0; 256],
        }
    }

    #[test]
    fn discovery_entry_layout() {
        let e = tcp_entry();
        let b = e.to_bytes();
        assert_eq!(&b[..12], &[3, 1, 2, 4, 1, 0, 0xFF, 0xFF, 32, 0, 0, 0]);
        assert_eq!(&b[32..37], b"4420\0");
        assert_eq!(&b[256..262], b"nqn.20");
        assert_eq!(&b[512..522], b"10.0.2.15\0");
        assert_eq!(DiscoveryEntry::decode(&b), Ok(e));
        assert_eq!(e.traddr.as_str(), Some("10.0.2.15"));
        assert_eq!(discovery_entry_offset(0), 1024);
    }

    #[test]
    fn discovery_windows() {
        let h = DiscoveryLogHeader {
            genctr: 5,
            numrec: 2,
            recfmt: 0,
        };
        let entries = [
            tcp_entry(),
            DiscoveryEntry {
                portid: 2,
                ..tcp_entry()
            },
        ];
        let mut whole = vec![0u8; 3 * 1024 + 100];
        assert_eq!(read_discovery_log(&h, &entries, 0, &mut whole), 3 * 1024);
        assert_eq!(&whole[..1024], &h.to_bytes()[..]);
        assert_eq!(&whole[1024..2048], &entries[0].to_bytes()[..]);
        assert_eq!(&whole[2048..3072], &entries[1].to_bytes()[..]);
        assert!(whole[3072..].iter().all(|&b| b == 0));
        // A 20-byte header read, then an unaligned window across two records.
        let mut small = [0xAAu8; 20];
        assert_eq!(read_discovery_log(&h, &entries, 0, &mut small), 20);
        assert_eq!(DiscoveryLogHeader::decode(&small), Ok(h));
        let mut mid = [0u8; 600];
        assert_eq!(read_discovery_log(&h, &entries, 1700, &mut mid), 600);
        assert_eq!(&mid[..], &whole[1700..2300]);
        let mut past = [0xAAu8; 8];
        assert_eq!(read_discovery_log(&h, &entries, 1 << 40, &mut past), 0);
        assert_eq!(past, [0; 8]);
    }

    #[test]
    fn error_and_smart_layouts() {
        let e = ErrorInfoEntry {
            error_count: 1,
            sqid: 2,
            cid: 3,
            status: StatusCode::LBA_OUT_OF_RANGE.dnr(),
            lba: 0x99,
            nsid: 1,
            ..ErrorInfoEntry::default()
        };
        let mut b = [0u8; 64];
        e.encode(&mut b).unwrap();
        assert_eq!(&b[8..14], &[2, 0, 3, 0, 0x00, 0x81]);
        assert_eq!(ErrorInfoEntry::decode(&b), Ok(e));

        let s = SmartLog {
            composite_temperature_k: 310,
            available_spare_pct: 100,
            power_on_hours: u128::MAX - 1,
            temperature_sensors_k: [300, 301, 0, 0, 0, 0, 0, 302],
            ..SmartLog::default()
        };
        let mut page = [0u8; 512];
        s.encode(&mut page).unwrap();
        assert_eq!(&page[1..4], &[0x36, 0x01, 100]);
        assert_eq!(&page[200..202], &300u16.to_le_bytes());
        assert_eq!(&page[214..216], &302u16.to_le_bytes());
        assert_eq!(SmartLog::decode(&page), Ok(s));
    }

    #[test]
    fn changed_ns_list() {
        let mut page = [0xEEu8; 4096];
        encode_changed_ns_list(&[3, 1], &mut page).unwrap();
        match decode_changed_ns_list(&page).unwrap() {
            ChangedNamespaces::List(l) => assert_eq!(l.collect::<Vec<_>>(), [3, 1]),
            other => panic!("{other:?}"),
        }
        let many: Vec<u32> = (1..=1025).collect();
        encode_changed_ns_list(&many, &mut page).unwrap();
        assert!(matches!(decode_changed_ns_list(&page), Ok(ChangedNamespaces::TooMany)));
        assert!(page[4..].iter().all(|&b| b == 0));
        assert!(decode_changed_ns_list(&page[..3]).is_err());
    }
}
