//! Identify data: the controller and namespace pages, the active namespace list and the
//! namespace identification descriptors.
//!
//! Every Identify transfer is 4096 bytes. The target encodes these pages into the command's data
//! buffer (caller-owned, at least [`IDENTIFY_LEN`] bytes; bytes this crate does not name are
//! written as zero), the initiator and the PCIe driver decode them. Only the fields the Linux
//! host and SPDK read, and that Keel's target fills, are named (`nvme-tcp.md` §10.1); the
//! rest of the page is reserved or optional and decodes to nothing.
//!
//! Identify Controller's fabrics fields (IOCCSZ, IORCSZ, ICDOFF, FCATT, MSDBD, OFCS, DCTYPE)
//! live at 1792.. and are meaningful only over fabrics; PCIe controllers leave them zero.

use crate::nqn::{FixedText, NqnField, NQN_FIELD_LEN};
use crate::wire::{
    array, array_mut, get_bytes, get_u16, get_u32, get_u64, get_u8, put_bytes, put_u16, put_u32, put_u64, put_u8,
    slice, slice_mut,
};
use crate::{Expected, ProtoError};

/// Length of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;
/// Slots of the active namespace list.
pub const ACTIVE_NS_LIST_SLOTS: usize = 1024;
/// LBA format slots of Identify Namespace.
pub const LBA_FORMATS: usize = 64;

// Every Identify structure is 4096 bytes; the active list fills it with 1024 NSIDs, and the LBA
// format table (128 + 64 × 4) ends well inside it.
const _: () = assert!(IDENTIFY_LEN == 4096 && ACTIVE_NS_LIST_SLOTS * 4 == IDENTIFY_LEN);
const _: () = assert!(128 + LBA_FORMATS * 4 <= IDENTIFY_LEN);

/// Controller or Namespace Structure selector of Identify (CDW10 7:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cns(pub u8);

impl Cns {
    /// Identify Namespace for NSID.
    pub const NAMESPACE: Cns = Cns(0x00);
    /// Identify Controller.
    pub const CONTROLLER: Cns = Cns(0x01);
    /// Active namespace id list (NSIDs above the command's NSID).
    pub const ACTIVE_NS_LIST: Cns = Cns(0x02);
    /// Namespace identification descriptor list for NSID.
    pub const NS_ID_DESCRIPTORS: Cns = Cns(0x03);
    /// NVM set list.
    pub const NVM_SET_LIST: Cns = Cns(0x04);
    /// I/O command set specific Identify Namespace.
    pub const CSI_NAMESPACE: Cns = Cns(0x05);
    /// I/O command set specific Identify Controller.
    pub const CSI_CONTROLLER: Cns = Cns(0x06);
    /// I/O command set specific active namespace list.
    pub const CSI_ACTIVE_NS_LIST: Cns = Cns(0x07);
    /// I/O command set independent Identify Namespace.
    pub const CSI_INDEPENDENT_NAMESPACE: Cns = Cns(0x08);
}

/// Identify Controller (CNS 01h). Built by the target per connection (CNTLID must be the one
/// Connect returned) and decoded by the initiator and the PCIe driver at attach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdentifyController {
    /// PCI vendor id (0).
    pub vid: u16,
    /// PCI subsystem vendor id (2).
    pub ssvid: u16,
    /// Serial number, space padded (4).
    pub sn: FixedText<20>,
    /// Model number, space padded (24).
    pub mn: FixedText<40>,
    /// Firmware revision (64).
    pub fr: FixedText<8>,
    /// Recommended arbitration burst (72).
    pub rab: u8,
    /// IEEE OUI (73).
    pub ieee: [u8; 3],
    /// Multi-path I/O and namespace sharing capabilities (76): bit 0 multi-port, 1
    /// multi-controller, 3 ANA.
    pub cmic: u8,
    /// Maximum data transfer size, 2^n minimum pages; 0 = no limit (77).
    pub mdts: u8,
    /// Controller id (78).
    pub cntlid: u16,
    /// Version, as VS (80).
    pub ver: u32,
    /// RTD3 resume latency, µs (84).
    pub rtd3r: u32,
    /// RTD3 entry latency, µs; the host's shutdown wait (88).
    pub rtd3e: u32,
    /// Optional asynchronous events supported (92): bit 8 NS attribute, 9 FW activation, 11 ANA,
    /// 31 discovery log change.
    pub oaes: u32,
    /// Controller attributes (96): bit 0 128-bit host id, 6 TBKAS, 15 ELBAS.
    pub ctratt: u32,
    /// Controller type (111): 1 I/O, 2 discovery, 3 administrative.
    pub cntrltype: u8,
    /// Command retry delay times 1–3, in 100 ms (128, 130, 132).
    pub crdt: [u16; 3],
    /// Optional admin command support (256).
    pub oacs: u16,
    /// Abort command limit, zero-based (258).
    pub acl: u8,
    /// Asynchronous event request limit, zero-based (259).
    pub aerl: u8,
    /// Firmware updates (260).
    pub frmw: u8,
    /// Log page attributes (261): bit 1 commands supported and effects, bit 2 extended data.
    pub lpa: u8,
    /// Error log page entries, zero-based (262).
    pub elpe: u8,
    /// Number of power states supported, zero-based (263).
    pub npss: u8,
    /// Admin vendor specific command configuration (264).
    pub avscc: u8,
    /// Autonomous power state transition attributes (265).
    pub apsta: u8,
    /// Warning composite temperature threshold, K (266).
    pub wctemp: u16,
    /// Critical composite temperature threshold, K (268).
    pub cctemp: u16,
    /// Keep alive support: granularity in 100 ms units, 0 = unsupported (320).
    pub kas: u16,
    /// ANA transition time, s (342).
    pub anatt: u8,
    /// ANA capabilities (343).
    pub anacap: u8,
    /// ANA group identifier maximum (344).
    pub anagrpmax: u32,
    /// Number of ANA group identifiers (348).
    pub nanagrpid: u32,
    /// SQ entry size (512): bits 3:0 required, 7:4 maximum, log2 (0x66).
    pub sqes: u8,
    /// CQ entry size (513), as SQES (0x44).
    pub cqes: u8,
    /// Maximum outstanding commands (514).
    pub maxcmd: u16,
    /// Number of namespaces: the highest NSID (516).
    pub nn: u32,
    /// Optional NVM command support (520): bit 2 DSM, 3 Write Zeroes, 6 Timestamp, …
    pub oncs: u16,
    /// Fused operation support (522).
    pub fuses: u16,
    /// Format NVM attributes (524).
    pub fna: u8,
    /// Volatile write cache (525): bit 0 present, bits 2:1 flush-all-namespaces behaviour.
    pub vwc: u8,
    /// Atomic write unit normal, zero-based blocks (526).
    pub awun: u16,
    /// Atomic write unit power fail, zero-based blocks (528).
    pub awupf: u16,
    /// NVM vendor specific command configuration (530).
    pub nvscc: u8,
    /// Namespace write protection capabilities (531).
    pub nwpc: u8,
    /// Atomic compare & write unit (532).
    pub acwu: u16,
    /// SGL support (536): bits 1:0 SGLs supported, 2 keyed, 20 offset, 21 transport data block.
    pub sgls: u32,
    /// Maximum number of allowed namespaces (540).
    pub mnan: u32,
    /// The subsystem NQN (768).
    pub subnqn: NqnField,
    /// I/O queue command capsule supported size, in 16-byte units (1792).
    pub ioccsz: u32,
    /// I/O queue response capsule supported size, in 16-byte units (1796).
    pub iorcsz: u32,
    /// In-capsule data offset, in 16-byte units; Linux requires 0 (1800).
    pub icdoff: u16,
    /// Fabrics controller attributes (1802): bit 0 static controller model.
    pub fcatt: u8,
    /// Maximum SGL data block descriptors per capsule (1803).
    pub msdbd: u8,
    /// Optional fabric commands supported (1804): bit 0 Disconnect.
    pub ofcs: u16,
    /// Discovery controller type (1806).
    pub dctype: u8,
    /// Power state 0's maximum power, in centiwatts (2048).
    pub psd0_max_power_cw: u16,
}

impl IdentifyController {
    /// CNTRLTYPE of an I/O controller.
    pub const CNTRLTYPE_IO: u8 = 1;
    /// CNTRLTYPE of a discovery controller.
    pub const CNTRLTYPE_DISCOVERY: u8 = 2;
    /// CTRATT bit 0: 128-bit host identifier.
    pub const CTRATT_HOST_ID_128: u32 = 1 << 0;
    /// CTRATT bit 6: traffic based keep alive.
    pub const CTRATT_TBKAS: u32 = 1 << 6;
    /// ONCS bit 2: Dataset Management.
    pub const ONCS_DSM: u16 = 1 << 2;
    /// ONCS bit 3: Write Zeroes.
    pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;

    /// Writes the 4096-byte page into `out` (unnamed bytes zeroed); returns 4096.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProtoError> {
        const N: usize = IDENTIFY_LEN;
        let b = array_mut::<N>(out, "Identify Controller")?;
        b.fill(0);
        put_u16::<0, N>(b, self.vid);
        put_u16::<2, N>(b, self.ssvid);
        put_bytes::<4, 20, N>(b, self.sn.raw());
        put_bytes::<24, 40, N>(b, self.mn.raw());
        put_bytes::<64, 8, N>(b, self.fr.raw());
        put_u8::<72, N>(b, self.rab);
        put_bytes::<73, 3, N>(b, &self.ieee);
        put_u8::<76, N>(b, self.cmic);
        put_u8::<77, N>(b, self.mdts);
        put_u16::<78, N>(b, self.cntlid);
        put_u32::<80, N>(b, self.ver);
        put_u32::<84, N>(b, self.rtd3r);
        put_u32::<88, N>(b, self.rtd3e);
        put_u32::<92, N>(b, self.oaes);
        put_u32::<96, N>(b, self.ctratt);
        put_u8::<111, N>(b, self.cntrltype);
        put_u16::<128, N>(b, self.crdt[0]);
        put_u16::<130, N>(b, self.crdt[1]);
        put_u16::<132, N>(b, self.crdt[2]);
        put_u16::<256, N>(b, self.oacs);
        put_u8::<258, N>(b, self.acl);
        put_u8::<259, N>(b, self.aerl);
        put_u8::<260, N>(b, self.frmw);
        put_u8::<261, N>(b, self.lpa);
        put_u8::<262, N>(b, self.elpe);
        put_u8::<263, N>(b, self.npss);
        put_u8::<264, N>(b, self.avscc);
        put_u8::<265, N>(b, self.apsta);
        put_u16::<266, N>(b, self.wctemp);
        put_u16::<268, N>(b, self.cctemp);
        put_u16::<320, N>(b, self.kas);
        put_u8::<342, N>(b, self.anatt);
        put_u8::<343, N>(b, self.anacap);
        put_u32::<344, N>(b, self.anagrpmax);
        put_u32::<348, N>(b, self.nanagrpid);
        put_u8::<512, N>(b, self.sqes);
        put_u8::<513, N>(b, self.cqes);
        put_u16::<514, N>(b, self.maxcmd);
        put_u32::<516, N>(b, self.nn);
        put_u16::<520, N>(b, self.oncs);
        put_u16::<522, N>(b, self.fuses);
        put_u8::<524, N>(b, self.fna);
        put_u8::<525, N>(b, self.vwc);
        put_u16::<526, N>(b, self.awun);
        put_u16::<528, N>(b, self.awupf);
        put_u8::<530, N>(b, self.nvscc);
        put_u8::<531, N>(b, self.nwpc);
        put_u16::<532, N>(b, self.acwu);
        put_u32::<536, N>(b, self.sgls);
        put_u32::<540, N>(b, self.mnan);
        put_bytes::<768, NQN_FIELD_LEN, N>(b, self.subnqn.raw());
        put_u32::<1792, N>(b, self.ioccsz);
        put_u32::<1796, N>(b, self.iorcsz);
        put_u16::<1800, N>(b, self.icdoff);
        put_u8::<1802, N>(b, self.fcatt);
        put_u8::<1803, N>(b, self.msdbd);
        put_u16::<1804, N>(b, self.ofcs);
        put_u8::<1806, N>(b, self.dctype);
        put_u16::<2048, N>(b, self.psd0_max_power_cw);
        Ok(N)
    }

    /// Reads the page from the first 4096 bytes of `buf`. Any bit pattern decodes; an
    /// unterminated SUBNQN is cut at 256 bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        const N: usize = IDENTIFY_LEN;
        let b = array::<N>(buf, "Identify Controller")?;
        Ok(IdentifyController {
            vid: get_u16::<0, N>(b),
            ssvid: get_u16::<2, N>(b),
            sn: FixedText::from_raw(get_bytes::<4, 20, N>(b)),
            mn: FixedText::from_raw(get_bytes::<24, 40, N>(b)),
            fr: FixedText::from_raw(get_bytes::<64, 8, N>(b)),
            rab: get_u8::<72, N>(b),
            ieee: get_bytes::<73, 3, N>(b),
            cmic: get_u8::<76, N>(b),
            mdts: get_u8::<77, N>(b),
            cntlid: get_u16::<78, N>(b),
            ver: get_u32::<80, N>(b),
            rtd3r: get_u32::<84, N>(b),
            rtd3e: get_u32::<88, N>(b),
            oaes: get_u32::<92, N>(b),
            ctratt: get_u32::<96, N>(b),
            cntrltype: get_u8::<111, N>(b),
            crdt: [get_u16::<128, N>(b), get_u16::<130, N>(b), get_u16::<132, N>(b)],
            oacs: get_u16::<256, N>(b),
            acl: get_u8::<258, N>(b),
            aerl: get_u8::<259, N>(b),
            frmw: get_u8::<260, N>(b),
            lpa: get_u8::<261, N>(b),
            elpe: get_u8::<262, N>(b),
            npss: get_u8::<263, N>(b),
            avscc: get_u8::<264, N>(b),
            apsta: get_u8::<265, N>(b),
            wctemp: get_u16::<266, N>(b),
            cctemp: get_u16::<268, N>(b),
            kas: get_u16::<320, N>(b),
            anatt: get_u8::<342, N>(b),
            anacap: get_u8::<343, N>(b),
            anagrpmax: get_u32::<344, N>(b),
            nanagrpid: get_u32::<348, N>(b),
            sqes: get_u8::<512, N>(b),
            cqes: get_u8::<513, N>(b),
            maxcmd: get_u16::<514, N>(b),
            nn: get_u32::<516, N>(b),
            oncs: get_u16::<520, N>(b),
            fuses: get_u16::<522, N>(b),
            fna: get_u8::<524, N>(b),
            vwc: get_u8::<525, N>(b),
            awun: get_u16::<526, N>(b),
            awupf: get_u16::<528, N>(b),
            nvscc: get_u8::<530, N>(b),
            nwpc: get_u8::<531, N>(b),
            acwu: get_u16::<532, N>(b),
            sgls: get_u32::<536, N>(b),
            mnan: get_u32::<540, N>(b),
            subnqn: NqnField::decode_lenient(&get_bytes::<768, NQN_FIELD_LEN, N>(b)),
            ioccsz: get_u32::<1792, N>(b),
            iorcsz: get_u32::<1796, N>(b),
            icdoff: get_u16::<1800, N>(b),
            fcatt: get_u8::<1802, N>(b),
            msdbd: get_u8::<1803, N>(b),
            ofcs: get_u16::<1804, N>(b),
            dctype: get_u8::<1806, N>(b),
            psd0_max_power_cw: get_u16::<2048, N>(b),
        })
    }

    /// In-capsule data bytes on I/O queues: IOCCSZ × 16 − 64 (0 if IOCCSZ < 4).
    pub const fn in_capsule_data_bytes(&self) -> u64 {
        (self.ioccsz as u64 * 16).saturating_sub(64)
    }

    /// Largest transfer in bytes given the minimum page size, or `None` for no limit (MDTS 0);
    /// saturates at `u64::MAX`.
    pub fn max_transfer_bytes(&self, min_page_bytes: u64) -> Option<u64> {
        if self.mdts == 0 {
            return None;
        }
        Some(
            1u64.checked_shl(u32::from(self.mdts))
                .and_then(|pages| min_page_bytes.checked_mul(pages))
                .unwrap_or(u64::MAX),
        )
    }
}

/// One LBA format of Identify Namespace: metadata bytes, log2 of the block size, relative
/// performance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub ms: u16,
    /// log2 of the data block size (9 = 512 B, 12 = 4 KiB); 0 = format unused.
    pub lbads: u8,
    /// Relative performance (bits 1:0; the rest of the byte is reserved and kept as sent).
    pub rp: u8,
}

/// Identify Namespace (CNS 00h). Built by the target per namespace (all zero for an inactive
/// NSID); decoded by the initiator and the PCIe driver for block size and capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// Namespace size in blocks (0).
    pub nsze: u64,
    /// Namespace capacity in blocks; 0 means unallocated (8).
    pub ncap: u64,
    /// Namespace utilization in blocks (16).
    pub nuse: u64,
    /// Namespace features (24): bit 0 thin, bit 4 NPWG/NOWS valid.
    pub nsfeat: u8,
    /// Number of LBA formats, zero-based (25).
    pub nlbaf: u8,
    /// Formatted LBA size (26): bits 3:0 format index, 4 metadata at end, 6:5 index high bits.
    pub flbas: u8,
    /// Metadata capabilities (27).
    pub mc: u8,
    /// End-to-end data protection capabilities (28).
    pub dpc: u8,
    /// End-to-end data protection type settings (29); 0 = no PI.
    pub dps: u8,
    /// Namespace multi-path and sharing (30): bit 0 shared.
    pub nmic: u8,
    /// Reservation capabilities (31).
    pub rescap: u8,
    /// Deallocate logical block features (33).
    pub dlfeat: u8,
    /// Optimal I/O boundary, blocks (46).
    pub noiob: u16,
    /// Preferred write granularity, zero-based blocks (64).
    pub npwg: u16,
    /// Optimal write size, zero-based blocks (72).
    pub nows: u16,
    /// ANA group id (92).
    pub anagrpid: u32,
    /// Namespace attributes (99): bit 0 write protected.
    pub nsattr: u8,
    /// Namespace globally unique identifier (104).
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier (120).
    pub eui64: [u8; 8],
    /// LBA formats (128, 4 bytes each).
    pub lbaf: [LbaFormat; LBA_FORMATS],
}

impl Default for IdentifyNamespace {
    fn default() -> Self {
        IdentifyNamespace {
            nsze: 0,
            ncap: 0,
            nuse: 0,
            nsfeat: 0,
            nlbaf: 0,
            flbas: 0,
            mc: 0,
            dpc: 0,
            dps: 0,
            nmic: 0,
            rescap: 0,
            dlfeat: 0,
            noiob: 0,
            npwg: 0,
            nows: 0,
            anagrpid: 0,
            nsattr: 0,
            nguid: [0; 16],
            eui64: [0; 8],
            lbaf: [LbaFormat::default(); LBA_FORMATS],
        }
    }
}

impl IdentifyNamespace {
    /// Writes the 4096-byte page into `out` (unnamed bytes zeroed); returns 4096.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProtoError> {
        const N: usize = IDENTIFY_LEN;
        let b = array_mut::<N>(out, "Identify Namespace")?;
        b.fill(0);
        put_u64::<0, N>(b, self.nsze);
        put_u64::<8, N>(b, self.ncap);
        put_u64::<16, N>(b, self.nuse);
        put_u8::<24, N>(b, self.nsfeat);
        put_u8::<25, N>(b, self.nlbaf);
        put_u8::<26, N>(b, self.flbas);
        put_u8::<27, N>(b, self.mc);
        put_u8::<28, N>(b, self.dpc);
        put_u8::<29, N>(b, self.dps);
        put_u8::<30, N>(b, self.nmic);
        put_u8::<31, N>(b, self.rescap);
        put_u8::<33, N>(b, self.dlfeat);
        put_u16::<46, N>(b, self.noiob);
        put_u16::<64, N>(b, self.npwg);
        put_u16::<72, N>(b, self.nows);
        put_u32::<92, N>(b, self.anagrpid);
        put_u8::<99, N>(b, self.nsattr);
        put_bytes::<104, 16, N>(b, &self.nguid);
        put_bytes::<120, 8, N>(b, &self.eui64);
        let formats = slice_mut::<128, { LBA_FORMATS * 4 }, N>(b);
        for (f, slot) in self.lbaf.iter().zip(formats.chunks_exact_mut(4)) {
            slot[..2].copy_from_slice(&f.ms.to_le_bytes());
            slot[2] = f.lbads;
            slot[3] = f.rp;
        }
        Ok(N)
    }

    /// Reads the page from the first 4096 bytes of `buf`. Any bit pattern decodes.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        const N: usize = IDENTIFY_LEN;
        let b = array::<N>(buf, "Identify Namespace")?;
        let mut lbaf = [LbaFormat::default(); LBA_FORMATS];
        for (f, slot) in lbaf
            .iter_mut()
            .zip(slice::<128, { LBA_FORMATS * 4 }, N>(b).chunks_exact(4))
        {
            if let [m0, m1, lbads, rp] = *slot {
                *f = LbaFormat {
                    ms: u16::from_le_bytes([m0, m1]),
                    lbads,
                    rp,
                };
            }
        }
        Ok(IdentifyNamespace {
            nsze: get_u64::<0, N>(b),
            ncap: get_u64::<8, N>(b),
            nuse: get_u64::<16, N>(b),
            nsfeat: get_u8::<24, N>(b),
            nlbaf: get_u8::<25, N>(b),
            flbas: get_u8::<26, N>(b),
            mc: get_u8::<27, N>(b),
            dpc: get_u8::<28, N>(b),
            dps: get_u8::<29, N>(b),
            nmic: get_u8::<30, N>(b),
            rescap: get_u8::<31, N>(b),
            dlfeat: get_u8::<33, N>(b),
            noiob: get_u16::<46, N>(b),
            npwg: get_u16::<64, N>(b),
            nows: get_u16::<72, N>(b),
            anagrpid: get_u32::<92, N>(b),
            nsattr: get_u8::<99, N>(b),
            nguid: get_bytes::<104, 16, N>(b),
            eui64: get_bytes::<120, 8, N>(b),
            lbaf,
        })
    }

    /// Index of the LBA format in use (FLBAS bits 3:0, with bits 6:5 as bits 5:4).
    pub const fn format_index(&self) -> usize {
        (self.flbas & 0xF) as usize | (((self.flbas >> 5) & 0x3) as usize * 16)
    }

    /// Data block size in bytes of the format in use; `Err` if its LBADS is outside 9..=31.
    pub fn block_size_bytes(&self) -> Result<u32, ProtoError> {
        let lbads = self.lbaf.get(self.format_index()).map_or(0, |f| f.lbads);
        if !(9..=31).contains(&lbads) {
            return Err(ProtoError::field(
                "Identify Namespace",
                "LBADS",
                128 + 4 * self.format_index() + 2,
                Expected::Range { min: 9, max: 31 },
                u64::from(lbads),
            ));
        }
        Ok(1 << lbads)
    }
}

/// Writes the active namespace id list (CNS 02h) into the 4096 bytes at `out`: the NSIDs of
/// `nsids` (non-zero, strictly ascending; the target passes those above the command's NSID), at
/// most 1024, then zeros. Returns how many NSIDs were written; further ones are left out as the
/// spec says.
pub fn encode_active_ns_list(nsids: impl IntoIterator<Item = u32>, out: &mut [u8]) -> Result<usize, ProtoError> {
    const N: usize = IDENTIFY_LEN;
    let b = array_mut::<N>(out, "active namespace list")?;
    b.fill(0);
    let mut prev = 0u32;
    let mut count = 0;
    for (nsid, slot) in nsids.into_iter().zip(b.chunks_exact_mut(4)) {
        if nsid <= prev {
            return Err(ProtoError::field(
                "active namespace list",
                "NSID",
                count * 4,
                Expected::Text("non-zero and ascending"),
                u64::from(nsid),
            ));
        }
        slot.copy_from_slice(&nsid.to_le_bytes());
        prev = nsid;
        count += 1;
    }
    Ok(count)
}

/// The NSIDs of an active namespace list (CNS 02h), up to the first zero slot. Reads the
/// caller's buffer in place; `Err` if it is shorter than 4096 bytes.
pub fn decode_active_ns_list(buf: &[u8]) -> Result<NsidList<'_>, ProtoError> {
    Ok(NsidList::new(array::<IDENTIFY_LEN>(buf, "active namespace list")?))
}

/// Iterator over a list of little-endian u32 NSIDs that ends at the first zero (the active
/// namespace list, the changed namespace list). Borrows the caller's buffer; no allocation.
#[derive(Debug, Clone)]
pub struct NsidList<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl<'a> NsidList<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        NsidList {
            chunks: buf.chunks_exact(4),
        }
    }
}

impl Iterator for NsidList<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match *self.chunks.next()? {
            [a, b, c, d] => Some(u32::from_le_bytes([a, b, c, d])).filter(|&n| n != 0),
            _ => None,
        }
        .or_else(|| {
            // A zero ends the list for good.
            self.chunks = (&[] as &[u8]).chunks_exact(4);
            None
        })
    }
}

/// One namespace identification descriptor (CNS 03h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsIdDescriptor {
    /// NIDT 1: IEEE EUI-64.
    Eui64([u8; 8]),
    /// NIDT 2: NGUID.
    Nguid([u8; 16]),
    /// NIDT 3: UUID.
    Uuid([u8; 16]),
    /// NIDT 4: command set identifier.
    Csi(u8),
}

impl NsIdDescriptor {
    /// Length of the header before the identifier (NIDT, NIDL, 2 reserved).
    pub const HEADER_LEN: usize = 4;

    /// NIDT.
    pub const fn nidt(&self) -> u8 {
        match self {
            NsIdDescriptor::Eui64(_) => 1,
            NsIdDescriptor::Nguid(_) => 2,
            NsIdDescriptor::Uuid(_) => 3,
            NsIdDescriptor::Csi(_) => 4,
        }
    }

    /// The identifier bytes.
    pub fn id(&self) -> &[u8] {
        match self {
            NsIdDescriptor::Eui64(v) => v,
            NsIdDescriptor::Nguid(v) | NsIdDescriptor::Uuid(v) => v,
            NsIdDescriptor::Csi(v) => std::slice::from_ref(v),
        }
    }

    /// Bytes this descriptor takes (header + identifier).
    pub fn encoded_len(&self) -> usize {
        Self::HEADER_LEN + self.id().len()
    }
}

/// Writes a namespace identification descriptor list into the 4096 bytes at `out`: each
/// descriptor packed after the previous one, then zeros (which end the list). Returns the bytes
/// of descriptors written.
pub fn encode_ns_id_descriptors(descs: &[NsIdDescriptor], out: &mut [u8]) -> Result<usize, ProtoError> {
    let b = array_mut::<IDENTIFY_LEN>(out, "namespace id descriptors")?;
    b.fill(0);
    let mut at = 0usize;
    for d in descs {
        let id = d.id();
        let end = at + d.encoded_len();
        let Some(slot) = b.get_mut(at..end) else {
            return Err(ProtoError::BufferTooSmall {
                what: "namespace id descriptors",
                need: end,
                have: IDENTIFY_LEN,
            });
        };
        slot[0] = d.nidt();
        slot[1] = id.len() as u8;
        slot[NsIdDescriptor::HEADER_LEN..].copy_from_slice(id);
        at = end;
    }
    Ok(at)
}

/// Iterator over a namespace identification descriptor list; see [`decode_ns_id_descriptors`].
#[derive(Debug, Clone)]
pub struct NsIdDescriptors<'a> {
    rest: &'a [u8],
    at: usize,
    failed: bool,
}

/// The descriptors of a CNS 03h page in `buf` (read in place, up to NIDL = 0 or the end of the
/// buffer). Descriptors of unknown types are skipped; a known type with the wrong length or a
/// descriptor running past the end yields one `Err` and ends the iteration.
pub fn decode_ns_id_descriptors(buf: &[u8]) -> NsIdDescriptors<'_> {
    NsIdDescriptors {
        rest: buf,
        at: 0,
        failed: false,
    }
}

impl Iterator for NsIdDescriptors<'_> {
    type Item = Result<NsIdDescriptor, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        const W: &str = "namespace id descriptor";
        loop {
            if self.failed {
                return None;
            }
            let (nidt, nidl) = match self.rest {
                [nidt, nidl, ..] if *nidl != 0 => (*nidt, usize::from(*nidl)),
                _ => return None,
            };
            let total = NsIdDescriptor::HEADER_LEN + nidl;
            let Some(id) = self.rest.get(NsIdDescriptor::HEADER_LEN..total) else {
                self.failed = true;
                return Some(Err(ProtoError::Truncated {
                    what: W,
                    need: total,
                    have: self.rest.len(),
                }));
            };
            let want = match nidt {
                1 => 8,
                2 | 3 => 16,
                4 => 1,
                _ => nidl,
            };
            if nidl != want {
                self.failed = true;
                return Some(Err(ProtoError::field(
                    W,
                    "NIDL",
                    self.at + 1,
                    Expected::Exactly(want as u64),
                    nidl as u64,
                )));
            }
            let d = match (nidt, id) {
                (1, id) => id.first_chunk::<8>().map(|v| NsIdDescriptor::Eui64(*v)),
                (2, id) => id.first_chunk::<16>().map(|v| NsIdDescriptor::Nguid(*v)),
                (3, id) => id.first_chunk::<16>().map(|v| NsIdDescriptor::Uuid(*v)),
                (4, [v]) => Some(NsIdDescriptor::Csi(*v)),
                _ => None,
            };
            self.rest = self.rest.get(total..).unwrap_or_default();
            self.at += total;
            if let Some(d) = d {
                return Some(Ok(d));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller the lab's minimal Python target offered and Linux accepted
    /// (nvme-tcp.md §15 item 4).
    fn lab_controller() -> IdentifyController {
        IdentifyController {
            sn: FixedText::space_padded("KEEL0001").unwrap(),
            mn: FixedText::space_padded("Keel").unwrap(),
            fr: FixedText::space_padded("0.1.0").unwrap(),
            rab: 6,
            cntlid: 1,
            ver: 0x0001_0300,
            mdts: 5,
            oaes: 0x100,
            acl: 3,
            aerl: 3,
            frmw: 1,
            kas: 10,
            sqes: 0x66,
            cqes: 0x44,
            maxcmd: 128,
            nn: 1,
            oncs: 0x0C,
            vwc: 1,
            sgls: 0x0010_0001,
            subnqn: NqnField::new("nqn.2016-06.io.spdk:cnode1").unwrap(),
            ioccsz: 516,
            iorcsz: 1,
            msdbd: 1,
            cntrltype: IdentifyController::CNTRLTYPE_IO,
            ..IdentifyController::default()
        }
    }

    #[test]
    fn controller_field_offsets() {
        let c = lab_controller();
        let mut page = [0xAAu8; 4096];
        assert_eq!(c.encode(&mut page), Ok(4096));
        assert_eq!(&page[4..24], b"KEEL0001            ");
        assert_eq!(&page[64..72], b"0.1.0   ");
        assert_eq!((page[72], page[77]), (6, 5));
        assert_eq!(&page[78..80], &[1, 0]);
        assert_eq!(&page[80..84], &[0x00, 0x03, 0x01, 0x00]);
        assert_eq!(&page[92..96], &[0x00, 0x01, 0, 0]);
        assert_eq!(page[111], 1);
        assert_eq!((page[258], page[259], page[260]), (3, 3, 1));
        assert_eq!(&page[320..322], &[10, 0]);
        assert_eq!((page[512], page[513]), (0x66, 0x44));
        assert_eq!(&page[514..516], &128u16.to_le_bytes());
        assert_eq!(&page[516..520], &1u32.to_le_bytes());
        assert_eq!(&page[520..522], &[0x0C, 0]);
        assert_eq!(page[525], 1);
        assert_eq!(&page[536..540], &[0x01, 0x00, 0x10, 0x00]);
        assert_eq!(&page[768..794], b"nqn.2016-06.io.spdk:cnode1");
        assert_eq!(page[794], 0);
        assert_eq!(&page[1792..1796], &516u32.to_le_bytes());
        assert_eq!(&page[1796..1800], &1u32.to_le_bytes());
        assert_eq!(page[1803], 1);
        assert!(page[2050..].iter().all(|&b| b == 0));
        let back = IdentifyController::decode(&page).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.in_capsule_data_bytes(), 8192);
        assert_eq!(back.max_transfer_bytes(4096), Some(128 * 1024));
        assert_eq!(
            IdentifyController { mdts: 60, ..c }.max_transfer_bytes(4096),
            Some(u64::MAX)
        );
        assert_eq!(IdentifyController { mdts: 0, ..c }.max_transfer_bytes(4096), None);
        assert_eq!(back.sn.as_str(), Some("KEEL0001"));
        assert!(IdentifyController::decode(&page[..4095]).is_err());
    }

    #[test]
    fn namespace_field_offsets() {
        // nvmet's namespace: NSFEAT 0x12, NMIC 1, ANAGRPID 1, LBAF0 = 0x00090000.
        let mut ns = IdentifyNamespace {
            nsze: 0x20_0000,
            ncap: 0x20_0000,
            nuse: 0x20_0000,
            nsfeat: 0x12,
            nmic: 1,
            anagrpid: 1,
            nguid: [7; 16],
            eui64: [9; 8],
            ..IdentifyNamespace::default()
        };
        ns.lbaf[0] = LbaFormat { ms: 0, lbads: 9, rp: 0 };
        ns.lbaf[4] = LbaFormat {
            ms: 8,
            lbads: 12,
            rp: 2,
        };
        let mut page = [0u8; 4096];
        ns.encode(&mut page).unwrap();
        assert_eq!(&page[0..8], &0x20_0000u64.to_le_bytes());
        assert_eq!((page[24], page[30]), (0x12, 1));
        assert_eq!(&page[92..96], &[1, 0, 0, 0]);
        assert_eq!(&page[104..120], &[7; 16]);
        assert_eq!(&page[120..128], &[9; 8]);
        assert_eq!(u32::from_le_bytes(page[128..132].try_into().unwrap()), 0x0009_0000);
        assert_eq!(&page[144..148], &[8, 0, 12, 2]);
        let back = IdentifyNamespace::decode(&page).unwrap();
        assert_eq!(back, ns);
        assert_eq!(back.block_size_bytes(), Ok(512));
        ns.flbas = 4;
        assert_eq!(ns.block_size_bytes(), Ok(4096));
        ns.flbas = 0x25; // index 0x15: bits 3:0 = 5, bits 6:5 = 1
        assert_eq!(ns.format_index(), 21);
        assert!(ns.block_size_bytes().is_err());
    }

    #[test]
    fn active_namespace_list() {
        let mut page = [0xFFu8; 4096];
        assert_eq!(encode_active_ns_list([1, 2, 7], &mut page), Ok(3));
        assert_eq!(&page[..16], &[1, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_active_ns_list(&page).unwrap().collect::<Vec<_>>(), [1, 2, 7]);
        assert!(encode_active_ns_list([2, 2], &mut page).is_err());
        assert!(encode_active_ns_list([0], &mut page).is_err());
        assert_eq!(encode_active_ns_list(1..=5000, &mut page), Ok(1024));
        assert_eq!(decode_active_ns_list(&page).unwrap().count(), 1024);
        assert!(decode_active_ns_list(&page[..100]).is_err());
    }

    #[test]
    fn ns_id_descriptors() {
        let descs = [
            NsIdDescriptor::Uuid([3; 16]),
            NsIdDescriptor::Csi(0),
            NsIdDescriptor::Nguid([2; 16]),
        ];
        let mut page = [0xEEu8; 4096];
        assert_eq!(encode_ns_id_descriptors(&descs, &mut page), Ok(20 + 5 + 20));
        assert_eq!(&page[..4], &[3, 16, 0, 0]);
        assert_eq!(&page[20..25], &[4, 1, 0, 0, 0]);
        assert_eq!(&page[25..29], &[2, 16, 0, 0]);
        let back: Result<Vec<_>, _> = decode_ns_id_descriptors(&page).collect();
        assert_eq!(back.unwrap(), descs);
        // An unknown type is skipped by its length.
        let mut raw = vec![9, 2, 0, 0, 0xAB, 0xCD, 1, 8, 0, 0];
        raw.extend_from_slice(&[5; 8]);
        let got: Vec<_> = decode_ns_id_descriptors(&raw).collect();
        assert_eq!(got, [Ok(NsIdDescriptor::Eui64([5; 8]))]);
        // Wrong length for a known type, and a descriptor running past the end.
        let bad = [1, 16, 0, 0];
        assert!(matches!(
            decode_ns_id_descriptors(&bad).next(),
            Some(Err(ProtoError::Truncated { .. }))
        ));
        let mut bad2 = vec![2, 8, 0, 0];
        bad2.extend_from_slice(&[0; 8]);
        let got: Vec<_> = decode_ns_id_descriptors(&bad2).collect();
        assert!(matches!(got[..], [Err(ProtoError::Field { field: "NIDL", .. })]));
        assert_eq!(decode_ns_id_descriptors(&[0u8; 64]).count(), 0);
    }
}
