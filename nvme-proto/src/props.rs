//! Controller properties (fabrics) and registers (PCIe BAR0) as typed bitfields.
//!
//! The same offsets and bit layouts serve both transports: a Fabrics Property Get/Set names a
//! property by its register offset ([`Property`]), and the PCIe driver reads and writes the
//! registers at those offsets in BAR0. Each register is a plain struct with one field per bit
//! range and a `from_bits`/`to_bits` pair; `to_bits` masks every field to its width, so the
//! round trip is exact for in-range values and never panics for others. Layouts follow
//! `nvme-pcie.md` §2.
//!
//! Doorbell offsets for the PCIe driver are computed by [`sq_tail_doorbell`] and
//! [`cq_head_doorbell`].

use crate::{Expected, ProtoError};

/// Access size of a Fabrics property (Property Get/Set ATTRIB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertySize {
    /// 4 bytes (ATTRIB 0).
    Four,
    /// 8 bytes (ATTRIB 1).
    Eight,
}

impl PropertySize {
    /// Bytes accessed.
    pub const fn bytes(self) -> u32 {
        match self {
            PropertySize::Four => 4,
            PropertySize::Eight => 8,
        }
    }
}

/// The controller properties / registers Keel names, by offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    /// Controller capabilities, 0x00, 8 bytes.
    Cap,
    /// Version, 0x08.
    Vs,
    /// Interrupt mask set, 0x0C (PCIe only).
    Intms,
    /// Interrupt mask clear, 0x10 (PCIe only).
    Intmc,
    /// Controller configuration, 0x14.
    Cc,
    /// Controller status, 0x1C.
    Csts,
    /// NVM subsystem reset, 0x20.
    Nssr,
    /// Admin queue attributes, 0x24 (PCIe only).
    Aqa,
    /// Admin SQ base address, 0x28, 8 bytes (PCIe only).
    Asq,
    /// Admin CQ base address, 0x30, 8 bytes (PCIe only).
    Acq,
}

impl Property {
    /// Every property, in offset order.
    pub const ALL: [Property; 10] = [
        Property::Cap,
        Property::Vs,
        Property::Intms,
        Property::Intmc,
        Property::Cc,
        Property::Csts,
        Property::Nssr,
        Property::Aqa,
        Property::Asq,
        Property::Acq,
    ];

    /// Register offset (the OFST of Property Get/Set).
    pub const fn offset(self) -> u32 {
        match self {
            Property::Cap => 0x00,
            Property::Vs => 0x08,
            Property::Intms => 0x0C,
            Property::Intmc => 0x10,
            Property::Cc => 0x14,
            Property::Csts => 0x1C,
            Property::Nssr => 0x20,
            Property::Aqa => 0x24,
            Property::Asq => 0x28,
            Property::Acq => 0x30,
        }
    }

    /// Width of the register.
    pub const fn size(self) -> PropertySize {
        match self {
            Property::Cap | Property::Asq | Property::Acq => PropertySize::Eight,
            _ => PropertySize::Four,
        }
    }

    /// True if the property exists over fabrics (INTMS, INTMC, AQA, ASQ and ACQ do not).
    pub const fn on_fabrics(self) -> bool {
        matches!(
            self,
            Property::Cap | Property::Vs | Property::Cc | Property::Csts | Property::Nssr
        )
    }

    /// The property at `offset`; `Err` naming OFST otherwise. Called by the target on Property
    /// Get/Set; it then checks [`Property::on_fabrics`] and the access size itself.
    pub fn from_offset(offset: u32) -> Result<Self, ProtoError> {
        Property::ALL
            .iter()
            .copied()
            .find(|p| p.offset() == offset)
            .ok_or(ProtoError::field(
                "Property command",
                "OFST",
                44,
                Expected::OneOf(&[0x00, 0x08, 0x0C, 0x10, 0x14, 0x1C, 0x20, 0x24, 0x28, 0x30]),
                u64::from(offset),
            ))
    }
}

/// The value written to NSSR to request an NVM subsystem reset ("NVMe").
pub const NSSR_RESET_VALUE: u32 = 0x4E56_4D65;

/// Offset of the first doorbell in BAR0.
pub const DOORBELL_BASE: u32 = 0x1000;

// The admin queue registers end where CMBLOC begins (0x38), and doorbells start at 0x1000
// (nvme-pcie.md §2).
const _: () = assert!(Property::Acq.offset() + Property::Acq.size().bytes() == 0x38);
const _: () =
    assert!(sq_tail_doorbell(0, 0) == DOORBELL_BASE as u64 && cq_head_doorbell(0, 0) == DOORBELL_BASE as u64 + 4);

/// BAR0 offset of submission queue `qid`'s tail doorbell, with CAP.DSTRD `dstrd` (64-bit: the
/// largest queue id with the largest stride is past 4 GiB). Called by the PCIe driver when it
/// creates a queue pair.
pub const fn sq_tail_doorbell(qid: u16, dstrd: u8) -> u64 {
    DOORBELL_BASE as u64 + (2 * qid as u64) * (4u64 << (dstrd & 0xF))
}

/// BAR0 offset of completion queue `qid`'s head doorbell, with CAP.DSTRD `dstrd`.
pub const fn cq_head_doorbell(qid: u16, dstrd: u8) -> u64 {
    DOORBELL_BASE as u64 + (2 * qid as u64 + 1) * (4u64 << (dstrd & 0xF))
}

const fn field64(v: u64, lo: u32, width: u32) -> u64 {
    (v >> lo) & ((1u64 << width) - 1)
}

const fn place64(v: u64, lo: u32, width: u32) -> u64 {
    (v & ((1u64 << width) - 1)) << lo
}

/// CAP, controller capabilities (8 bytes at 0x00, read-only). Built by the target and the
/// controller model; read by the initiator and the PCIe driver at bring-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cap {
    /// MQES: maximum I/O queue entries, zero-based (bits 15:0).
    pub mqes_0based: u16,
    /// CQR: queues must be physically contiguous (bit 16).
    pub cqr: bool,
    /// AMS: arbitration mechanisms supported beyond round robin (bits 18:17).
    pub ams: u8,
    /// TO: worst-case time for RDY to follow EN, in 500 ms units (bits 31:24).
    pub timeout_500ms: u8,
    /// DSTRD: doorbell stride, 2^(2+DSTRD) bytes (bits 35:32).
    pub dstrd: u8,
    /// NSSRS: NVM subsystem reset supported (bit 36).
    pub nssrs: bool,
    /// CSS: command sets supported (bits 44:37; bit 0 = NVM, bit 6 = I/O command sets, bit 7 =
    /// admin only).
    pub css: u8,
    /// BPS: boot partitions (bit 45).
    pub bps: bool,
    /// MPSMIN: minimum page size 2^(12+n) (bits 51:48).
    pub mpsmin: u8,
    /// MPSMAX: maximum page size 2^(12+n) (bits 55:52).
    pub mpsmax: u8,
    /// PMRS: persistent memory region (bit 56).
    pub pmrs: bool,
    /// CMBS: controller memory buffer (bit 57).
    pub cmbs: bool,
    /// NSSS: subsystem shutdown (bit 58).
    pub nsss: bool,
    /// CRWMS: CRTO valid, ready with media (bit 59).
    pub crwms: bool,
    /// CRIMS: ready independent of media (bit 60).
    pub crims: bool,
}

impl Cap {
    /// CSS bit: the NVM command set.
    pub const CSS_NVM: u8 = 1 << 0;
    /// CSS bit: one or more I/O command sets (CC.CSS = 110b allowed).
    pub const CSS_IO_COMMAND_SETS: u8 = 1 << 6;
    /// CSS bit: admin command set only.
    pub const CSS_ADMIN_ONLY: u8 = 1 << 7;

    /// The 64-bit value.
    pub const fn to_bits(&self) -> u64 {
        place64(self.mqes_0based as u64, 0, 16)
            | place64(self.cqr as u64, 16, 1)
            | place64(self.ams as u64, 17, 2)
            | place64(self.timeout_500ms as u64, 24, 8)
            | place64(self.dstrd as u64, 32, 4)
            | place64(self.nssrs as u64, 36, 1)
            | place64(self.css as u64, 37, 8)
            | place64(self.bps as u64, 45, 1)
            | place64(self.mpsmin as u64, 48, 4)
            | place64(self.mpsmax as u64, 52, 4)
            | place64(self.pmrs as u64, 56, 1)
            | place64(self.cmbs as u64, 57, 1)
            | place64(self.nsss as u64, 58, 1)
            | place64(self.crwms as u64, 59, 1)
            | place64(self.crims as u64, 60, 1)
    }

    /// Reads the 64-bit value (reserved bits ignored).
    pub const fn from_bits(v: u64) -> Self {
        Cap {
            mqes_0based: field64(v, 0, 16) as u16,
            cqr: field64(v, 16, 1) != 0,
            ams: field64(v, 17, 2) as u8,
            timeout_500ms: field64(v, 24, 8) as u8,
            dstrd: field64(v, 32, 4) as u8,
            nssrs: field64(v, 36, 1) != 0,
            css: field64(v, 37, 8) as u8,
            bps: field64(v, 45, 1) != 0,
            mpsmin: field64(v, 48, 4) as u8,
            mpsmax: field64(v, 52, 4) as u8,
            pmrs: field64(v, 56, 1) != 0,
            cmbs: field64(v, 57, 1) != 0,
            nsss: field64(v, 58, 1) != 0,
            crwms: field64(v, 59, 1) != 0,
            crims: field64(v, 60, 1) != 0,
        }
    }

    /// Doorbell stride in bytes.
    pub const fn doorbell_stride_bytes(&self) -> u32 {
        4 << (self.dstrd & 0xF)
    }

    /// TO in milliseconds.
    pub const fn timeout_ms(&self) -> u32 {
        self.timeout_500ms as u32 * 500
    }
}

/// VS, the version (4 bytes at 0x08). 0x00010300 is 1.3.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Vs {
    /// Major version (bits 31:16).
    pub major: u16,
    /// Minor version (bits 15:8).
    pub minor: u8,
    /// Tertiary version (bits 7:0).
    pub tertiary: u8,
}

impl Vs {
    /// NVMe 1.3.0, what Keel's target reports.
    pub const V1_3_0: Vs = Vs {
        major: 1,
        minor: 3,
        tertiary: 0,
    };

    /// The 32-bit value.
    pub const fn to_bits(&self) -> u32 {
        (self.major as u32) << 16 | (self.minor as u32) << 8 | self.tertiary as u32
    }

    /// Reads the 32-bit value.
    pub const fn from_bits(v: u32) -> Self {
        Vs {
            major: (v >> 16) as u16,
            minor: (v >> 8) as u8,
            tertiary: v as u8,
        }
    }
}

/// CC.SHN / CSTS.SHST shutdown values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shutdown {
    /// CC.SHN 00b: no notification. CSTS.SHST 00b: normal operation.
    #[default]
    None,
    /// CC.SHN 01b: normal shutdown. CSTS.SHST 01b: shutdown processing occurring.
    Normal,
    /// CC.SHN 10b: abrupt shutdown. CSTS.SHST 10b: shutdown processing complete.
    Abrupt,
    /// 11b: reserved.
    Reserved,
}

impl Shutdown {
    /// In CSTS, 10b means "shutdown complete".
    pub const COMPLETE: Shutdown = Shutdown::Abrupt;
    /// In CSTS, 01b means "shutdown in progress".
    pub const IN_PROGRESS: Shutdown = Shutdown::Normal;

    const fn bits(self) -> u32 {
        match self {
            Shutdown::None => 0,
            Shutdown::Normal => 1,
            Shutdown::Abrupt => 2,
            Shutdown::Reserved => 3,
        }
    }

    const fn from(v: u32) -> Self {
        match v & 3 {
            0 => Shutdown::None,
            1 => Shutdown::Normal,
            2 => Shutdown::Abrupt,
            _ => Shutdown::Reserved,
        }
    }
}

const fn field32(v: u32, lo: u32, width: u32) -> u32 {
    (v >> lo) & ((1u32 << width) - 1)
}

const fn place32(v: u32, lo: u32, width: u32) -> u32 {
    (v & ((1u32 << width) - 1)) << lo
}

/// CC, controller configuration (4 bytes at 0x14). Written by the initiator and the PCIe
/// driver; the target runs its controller state machine on each write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cc {
    /// EN (bit 0).
    pub enable: bool,
    /// CSS (bits 6:4): 000b NVM, 110b all supported I/O command sets, 111b admin only.
    pub css: u8,
    /// MPS (bits 10:7): memory page size 2^(12+MPS).
    pub mps: u8,
    /// AMS (bits 13:11): arbitration; 000b round robin.
    pub ams: u8,
    /// SHN (bits 15:14).
    pub shn: Shutdown,
    /// IOSQES (bits 19:16): log2 of the I/O SQ entry size (6).
    pub iosqes: u8,
    /// IOCQES (bits 23:20): log2 of the I/O CQ entry size (4).
    pub iocqes: u8,
    /// CRIME (bit 24): controller ready independent of media enable.
    pub crime: bool,
}

impl Cc {
    /// The 32-bit value.
    pub const fn to_bits(&self) -> u32 {
        place32(self.enable as u32, 0, 1)
            | place32(self.css as u32, 4, 3)
            | place32(self.mps as u32, 7, 4)
            | place32(self.ams as u32, 11, 3)
            | place32(self.shn.bits(), 14, 2)
            | place32(self.iosqes as u32, 16, 4)
            | place32(self.iocqes as u32, 20, 4)
            | place32(self.crime as u32, 24, 1)
    }

    /// Reads the 32-bit value.
    pub const fn from_bits(v: u32) -> Self {
        Cc {
            enable: field32(v, 0, 1) != 0,
            css: field32(v, 4, 3) as u8,
            mps: field32(v, 7, 4) as u8,
            ams: field32(v, 11, 3) as u8,
            shn: Shutdown::from(field32(v, 14, 2)),
            iosqes: field32(v, 16, 4) as u8,
            iocqes: field32(v, 20, 4) as u8,
            crime: field32(v, 24, 1) != 0,
        }
    }
}

/// CSTS, controller status (4 bytes at 0x1C). Maintained by the target's controller state
/// machine; polled by the initiator and the PCIe driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Csts {
    /// RDY (bit 0).
    pub ready: bool,
    /// CFS, controller fatal status (bit 1).
    pub fatal: bool,
    /// SHST (bits 3:2).
    pub shst: Shutdown,
    /// NSSRO, subsystem reset occurred (bit 4).
    pub nssro: bool,
    /// PP, processing paused (bit 5).
    pub paused: bool,
}

impl Csts {
    /// What a read returns when the PCIe device is gone.
    pub const DEVICE_GONE: u32 = 0xFFFF_FFFF;

    /// The 32-bit value.
    pub const fn to_bits(&self) -> u32 {
        place32(self.ready as u32, 0, 1)
            | place32(self.fatal as u32, 1, 1)
            | place32(self.shst.bits(), 2, 2)
            | place32(self.nssro as u32, 4, 1)
            | place32(self.paused as u32, 5, 1)
    }

    /// Reads the 32-bit value.
    pub const fn from_bits(v: u32) -> Self {
        Csts {
            ready: field32(v, 0, 1) != 0,
            fatal: field32(v, 1, 1) != 0,
            shst: Shutdown::from(field32(v, 2, 2)),
            nssro: field32(v, 4, 1) != 0,
            paused: field32(v, 5, 1) != 0,
        }
    }
}

/// AQA, admin queue attributes (4 bytes at 0x24, PCIe). Written by the PCIe driver before
/// enabling the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Aqa {
    /// ASQS: admin SQ entries, zero-based (bits 11:0).
    pub asqs_0based: u16,
    /// ACQS: admin CQ entries, zero-based (bits 27:16).
    pub acqs_0based: u16,
}

impl Aqa {
    /// The 32-bit value.
    pub const fn to_bits(&self) -> u32 {
        place32(self.asqs_0based as u32, 0, 12) | place32(self.acqs_0based as u32, 16, 12)
    }

    /// Reads the 32-bit value.
    pub const fn from_bits(v: u32) -> Self {
        Aqa {
            asqs_0based: field32(v, 0, 12) as u16,
            acqs_0based: field32(v, 16, 12) as u16,
        }
    }
}

/// Checks an ASQ/ACQ base address: page aligned, bits 11:0 zero. Used by the controller model
/// and by the driver before it writes the register.
pub fn check_queue_base(property: Property, iova: u64) -> Result<u64, ProtoError> {
    if iova & 0xFFF != 0 {
        return Err(ProtoError::field(
            "controller register",
            if matches!(property, Property::Acq) {
                "ACQ"
            } else {
                "ASQ"
            },
            property.offset() as usize,
            Expected::MultipleOf(4096),
            iova,
        ));
    }
    Ok(iova)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_cap_values() {
        // nvme-pcie.md §11: QEMU CAP = 0x004008200F0107FF.
        let q = Cap::from_bits(0x0040_0820_0F01_07FF);
        assert_eq!(q.mqes_0based, 2047);
        assert!(q.cqr);
        assert_eq!(q.timeout_500ms, 15);
        assert_eq!(q.timeout_ms(), 7500);
        assert_eq!(q.dstrd, 0);
        assert_eq!(q.css, Cap::CSS_NVM | Cap::CSS_IO_COMMAND_SETS);
        assert_eq!((q.mpsmin, q.mpsmax), (0, 4));
        assert_eq!(q.to_bits(), 0x0040_0820_0F01_07FF);
        // nvme-tcp.md §9.2: nvmet CAP 0x000008200F0003FF, the lab target's 0x000000200F01007F.
        let n = Cap::from_bits(0x0000_0820_0F00_03FF);
        assert_eq!((n.mqes_0based, n.cqr, n.css), (1023, false, 0x41));
        let lab = Cap {
            mqes_0based: 127,
            cqr: true,
            timeout_500ms: 15,
            css: Cap::CSS_NVM,
            ..Cap::default()
        };
        assert_eq!(lab.to_bits(), 0x0000_0020_0F01_007F);
    }

    #[test]
    fn spec_cc_csts_values() {
        // nvme-pcie.md §2: 0x00460001 = EN, CSS 0, 4 KiB pages, RR, IOSQES 6, IOCQES 4.
        let cc = Cc {
            enable: true,
            iosqes: 6,
            iocqes: 4,
            ..Cc::default()
        };
        assert_eq!(cc.to_bits(), 0x0046_0001);
        // nvme-tcp.md §13: 0x00460060 (CSS 110b), shutdown 0x00464001.
        assert_eq!(
            Cc {
                enable: false,
                css: 6,
                ..cc
            }
            .to_bits(),
            0x0046_0060
        );
        let shn = Cc::from_bits(0x0046_4061);
        assert_eq!((shn.shn, shn.css, shn.enable), (Shutdown::Normal, 6, true));
        // CSTS 0x9: RDY with SHST 10b (shutdown complete).
        let cs = Csts::from_bits(0x9);
        assert!(cs.ready && !cs.fatal);
        assert_eq!(cs.shst, Shutdown::COMPLETE);
        assert_eq!(cs.to_bits(), 0x9);
        assert_eq!(
            Vs::from_bits(0x0001_0400),
            Vs {
                major: 1,
                minor: 4,
                tertiary: 0
            }
        );
        assert_eq!(Vs::V1_3_0.to_bits(), 0x0001_0300);
        assert_eq!(
            Aqa {
                asqs_0based: 15,
                acqs_0based: 15
            }
            .to_bits(),
            0x000F_000F
        );
    }

    #[test]
    fn offsets_and_doorbells() {
        assert_eq!(Property::from_offset(0x14), Ok(Property::Cc));
        assert_eq!(Property::Cap.size(), PropertySize::Eight);
        assert!(!Property::Aqa.on_fabrics());
        assert!(matches!(
            Property::from_offset(0x18),
            Err(ProtoError::Field { field: "OFST", .. })
        ));
        // nvme-pcie.md §2/§12: SQ0 0x1000, CQ0 0x1004, SQ1 0x1008, CQ1 0x100C with DSTRD 0.
        assert_eq!((sq_tail_doorbell(0, 0), cq_head_doorbell(0, 0)), (0x1000, 0x1004));
        assert_eq!((sq_tail_doorbell(1, 0), cq_head_doorbell(1, 0)), (0x1008, 0x100C));
        assert_eq!(cq_head_doorbell(1, 1), 0x1000 + 3 * 8);
        assert_eq!(cq_head_doorbell(u16::MAX, 15), 0x1000 + (2 * 65535 + 1) * (4 << 15));
        assert!(check_queue_base(Property::Asq, 0x20_0000).is_ok());
        assert!(check_queue_base(Property::Acq, 0x20_0010).is_err());
    }
}
