//! The 64-byte submission queue entry and the commands Keel sends and serves.
//!
//! [`Sqe`] is the entry as raw fields: opcode, flags (FUSE in bits 1:0, PSDT in bits 7:6), CID,
//! NSID, CDW2–3, MPTR, the 16-byte data pointer and CDW10–15. Every 64-byte pattern decodes into
//! an `Sqe`, so a target always has the CID to answer with, whatever else is wrong.
//!
//! The typed commands sit on top: [`AdminCommand`], [`FabricsCommand`] and [`NvmCommand`],
//! gathered in [`Command`]. `Command::decode(&sqe, queue)` reads the opcode for the queue the
//! entry arrived on (admin opcodes on queue 0, NVM opcodes on I/O queues, the Fabrics opcode 7Fh
//! on either); an unknown opcode or Fabrics type is a [`ProtoError::Field`] naming `OPC` or
//! `FCTYPE`, which [`ProtoError::status`] turns into Invalid Command Opcode. Going the other way,
//! `command.to_sqe(cid, data_pointer)` builds the entry; the data pointer is the transport's
//! business (PRPs on PCIe, one SGL descriptor over TCP — see [`DataPointer`]), and setting it
//! also sets PSDT.
//!
//! Values are kept as the spec counts them: fields that are zero-based on the wire are named
//! `*_0based` and stored as sent, so decode and encode are exact inverses; helpers give the
//! one-based counts (`block_count()`, `len_bytes()`). Reserved bits are written as zero and
//! ignored when read. The Connect command's 1024-byte data ([`ConnectData`]) and the Dataset
//! Management range list ([`DsmRange`]) travel as command data and have their own codecs here.

use crate::identify::Cns;
use crate::log::LogPageId;
use crate::nqn::{NqnField, NQN_FIELD_LEN};
use crate::props::PropertySize;
use crate::wire::{
    array, array_mut, get_bytes, get_u16, get_u32, get_u64, get_u8, put_bytes, put_u16, put_u32, put_u64, put_u8,
};
use crate::{Expected, ProtoError};

/// Encoded length of a submission queue entry.
pub const SQE_LEN: usize = 64;
/// Encoded length of an SGL descriptor (and of the DPTR field).
pub const SGL_DESCRIPTOR_LEN: usize = 16;
/// Encoded length of the Connect command's data.
pub const CONNECT_DATA_LEN: usize = 1024;
/// Encoded length of one Dataset Management range.
pub const DSM_RANGE_LEN: usize = 16;
/// Most ranges one Dataset Management command carries (NR is 8 bits, zero-based).
pub const DSM_MAX_RANGES: usize = 256;

// Fixed sizes from nvme-tcp.md §8, §9.1 and §12: a 64-byte entry of sixteen dwords whose DPTR is
// one 16-byte SGL descriptor, 1024 bytes of Connect data holding two NQN fields, and a DSM payload
// of at most 256 sixteen-byte ranges (Linux always sends 4096 bytes).
const _: () = assert!(SQE_LEN == 16 * 4 && SGL_DESCRIPTOR_LEN == 16);
const _: () = assert!(CONNECT_DATA_LEN == 1024 && 512 + NQN_FIELD_LEN <= CONNECT_DATA_LEN);
const _: () = assert!(DSM_MAX_RANGES * DSM_RANGE_LEN == 4096);

/// Opcodes of the admin command set (valid on queue 0).
pub mod admin_opcode {
    /// Delete I/O Submission Queue.
    pub const DELETE_IO_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_IO_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_IO_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_IO_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
}

/// Opcodes of the NVM command set (valid on I/O queues).
pub mod nvm_opcode {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
}

/// The Fabrics command opcode (any queue); the command type is FCTYPE at SQE byte 4.
pub const FABRICS_OPCODE: u8 = 0x7F;

/// Fabrics command types (FCTYPE).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send (not implemented by Keel; decodes as an unknown type).
    pub const AUTHENTICATION_SEND: u8 = 0x05;
    /// Authentication Receive (not implemented by Keel; decodes as an unknown type).
    pub const AUTHENTICATION_RECEIVE: u8 = 0x06;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// Fused operation (FUSE, SQE byte 1 bits 1:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuse {
    /// Normal operation.
    Normal,
    /// First command of a fused pair.
    First,
    /// Second command of a fused pair.
    Second,
}

/// How the data pointer is to be read (PSDT, SQE byte 1 bits 7:6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Psdt {
    /// 00b: PRP1/PRP2 (PCIe).
    Prp,
    /// 01b: one SGL descriptor; MPTR is a contiguous metadata buffer (what fabrics use).
    SglContiguousMetadata,
    /// 10b: one SGL descriptor; MPTR points to a metadata SGL segment.
    SglMetadataSgl,
}

/// SGL descriptor type (high nibble of the identifier byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SglType(pub u8);

impl SglType {
    /// A single data buffer.
    pub const DATA_BLOCK: SglType = SglType(0x0);
    /// Discard this many bytes of read data.
    pub const BIT_BUCKET: SglType = SglType(0x1);
    /// Points to a further list of descriptors.
    pub const SEGMENT: SglType = SglType(0x2);
    /// Points to the last list of descriptors.
    pub const LAST_SEGMENT: SglType = SglType(0x3);
    /// Data block with a remote key (RDMA).
    pub const KEYED_DATA_BLOCK: SglType = SglType(0x4);
    /// Data block whose location the transport defines (NVMe/TCP: data moves in PDUs).
    pub const TRANSPORT_DATA_BLOCK: SglType = SglType(0x5);
    /// Vendor specific.
    pub const VENDOR: SglType = SglType(0xF);
}

/// SGL descriptor subtype (low nibble of the identifier byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SglSubtype(pub u8);

impl SglSubtype {
    /// The address field is a memory address.
    pub const ADDRESS: SglSubtype = SglSubtype(0x0);
    /// The address field is an offset into the capsule's in-capsule data.
    pub const OFFSET: SglSubtype = SglSubtype(0x1);
    /// Transport specific (NVMe/TCP's transport data block uses it).
    pub const TRANSPORT: SglSubtype = SglSubtype(0xA);
    /// Keyed data block: invalidate the key after the transfer (RDMA).
    pub const INVALIDATE_KEY: SglSubtype = SglSubtype(0xF);
}

/// One 16-byte SGL descriptor: address (0..8), length (8..12), identifier at byte 15 =
/// type << 4 | subtype. A keyed data block packs a 24-bit length at 8..11 and a key at 11..15.
/// Built by initiators for DPTR (and by the PCIe driver for SGL segments); decoded by the target
/// to find where a command's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SglDescriptor {
    /// Type 0: a buffer at `address` (or an in-capsule offset with [`SglSubtype::OFFSET`]).
    DataBlock {
        /// Address or in-capsule offset.
        address: u64,
        /// Length in bytes.
        length: u32,
        /// Address or offset.
        subtype: SglSubtype,
    },
    /// Type 1: skip `length` bytes of read data.
    BitBucket {
        /// Bytes to discard.
        length: u32,
        /// Subtype nibble as sent.
        subtype: SglSubtype,
    },
    /// Type 2: a list of `length / 16` descriptors at `address`, possibly chaining on.
    Segment {
        /// Address of the list.
        address: u64,
        /// Bytes of the list (a multiple of 16).
        length: u32,
        /// Address or offset.
        subtype: SglSubtype,
    },
    /// Type 3: the last list of descriptors (only data blocks in it).
    LastSegment {
        /// Address of the list.
        address: u64,
        /// Bytes of the list (a multiple of 16).
        length: u32,
        /// Address or offset.
        subtype: SglSubtype,
    },
    /// Type 4: a remote buffer with a key (RDMA).
    KeyedDataBlock {
        /// Remote address.
        address: u64,
        /// Length in bytes, 24 bits.
        length: u32,
        /// Remote key.
        key: u32,
        /// Address or invalidate-key.
        subtype: SglSubtype,
    },
    /// Type 5: data the transport moves on its own (NVMe/TCP: C2HData/H2CData PDUs).
    TransportDataBlock {
        /// Address field (0 for NVMe/TCP).
        address: u64,
        /// Length in bytes.
        length: u32,
        /// [`SglSubtype::TRANSPORT`] for NVMe/TCP.
        subtype: SglSubtype,
    },
    /// Type F: vendor specific; the 15 bytes before the identifier, as sent.
    Vendor {
        /// Bytes 0..15.
        bytes: [u8; 15],
        /// Subtype nibble.
        subtype: SglSubtype,
    },
}

impl SglDescriptor {
    /// What the NVMe/TCP host puts in DPTR for data in the capsule: a data block at offset 0 of
    /// the in-capsule data (identifier 01h).
    pub const fn in_capsule(length: u32) -> Self {
        SglDescriptor::DataBlock {
            address: 0,
            length,
            subtype: SglSubtype::OFFSET,
        }
    }

    /// What the NVMe/TCP host puts in DPTR for data moved by R2T/H2CData or C2HData, and for
    /// commands without data (length 0): a transport data block (identifier 5Ah).
    pub const fn transport(length: u32) -> Self {
        SglDescriptor::TransportDataBlock {
            address: 0,
            length,
            subtype: SglSubtype::TRANSPORT,
        }
    }

    /// The descriptor type.
    pub const fn sgl_type(&self) -> SglType {
        match self {
            SglDescriptor::DataBlock { .. } => SglType::DATA_BLOCK,
            SglDescriptor::BitBucket { .. } => SglType::BIT_BUCKET,
            SglDescriptor::Segment { .. } => SglType::SEGMENT,
            SglDescriptor::LastSegment { .. } => SglType::LAST_SEGMENT,
            SglDescriptor::KeyedDataBlock { .. } => SglType::KEYED_DATA_BLOCK,
            SglDescriptor::TransportDataBlock { .. } => SglType::TRANSPORT_DATA_BLOCK,
            SglDescriptor::Vendor { .. } => SglType::VENDOR,
        }
    }

    /// The descriptor subtype.
    pub const fn subtype(&self) -> SglSubtype {
        match self {
            SglDescriptor::DataBlock { subtype, .. }
            | SglDescriptor::BitBucket { subtype, .. }
            | SglDescriptor::Segment { subtype, .. }
            | SglDescriptor::LastSegment { subtype, .. }
            | SglDescriptor::KeyedDataBlock { subtype, .. }
            | SglDescriptor::TransportDataBlock { subtype, .. }
            | SglDescriptor::Vendor { subtype, .. } => *subtype,
        }
    }

    /// The identifier byte (byte 15).
    pub const fn identifier(&self) -> u8 {
        self.sgl_type().0 << 4 | (self.subtype().0 & 0xF)
    }

    /// The length field in bytes (0 for vendor descriptors).
    pub const fn length(&self) -> u32 {
        match self {
            SglDescriptor::DataBlock { length, .. }
            | SglDescriptor::BitBucket { length, .. }
            | SglDescriptor::Segment { length, .. }
            | SglDescriptor::LastSegment { length, .. }
            | SglDescriptor::KeyedDataBlock { length, .. }
            | SglDescriptor::TransportDataBlock { length, .. } => *length,
            SglDescriptor::Vendor { .. } => 0,
        }
    }

    /// The 16 bytes of the descriptor. `Err` if a keyed length exceeds 24 bits or a subtype
    /// exceeds 4 bits.
    pub fn to_bytes(&self) -> Result<[u8; SGL_DESCRIPTOR_LEN], ProtoError> {
        const N: usize = SGL_DESCRIPTOR_LEN;
        let sub = self.subtype().0;
        crate::cqe::check_bits("SGL descriptor", "subtype", 15, u64::from(sub), 4)?;
        let mut b = [0u8; N];
        match *self {
            SglDescriptor::DataBlock { address, length, .. }
            | SglDescriptor::Segment { address, length, .. }
            | SglDescriptor::LastSegment { address, length, .. }
            | SglDescriptor::TransportDataBlock { address, length, .. } => {
                put_u64::<0, N>(&mut b, address);
                put_u32::<8, N>(&mut b, length);
            }
            SglDescriptor::BitBucket { length, .. } => put_u32::<8, N>(&mut b, length),
            SglDescriptor::KeyedDataBlock {
                address, length, key, ..
            } => {
                crate::cqe::check_bits("SGL descriptor", "keyed length", 8, u64::from(length), 24)?;
                put_u64::<0, N>(&mut b, address);
                put_bytes::<8, 3, N>(&mut b, &[length as u8, (length >> 8) as u8, (length >> 16) as u8]);
                put_u32::<11, N>(&mut b, key);
            }
            SglDescriptor::Vendor { bytes, .. } => put_bytes::<0, 15, N>(&mut b, &bytes),
        }
        put_u8::<15, N>(&mut b, self.identifier());
        Ok(b)
    }

    /// Reads a descriptor; `Err` for a reserved type (6..Eh). Reserved bytes are ignored.
    pub fn from_bytes(b: &[u8; SGL_DESCRIPTOR_LEN]) -> Result<Self, ProtoError> {
        const N: usize = SGL_DESCRIPTOR_LEN;
        let id = get_u8::<15, N>(b);
        let subtype = SglSubtype(id & 0xF);
        let address = get_u64::<0, N>(b);
        let length = get_u32::<8, N>(b);
        Ok(match SglType(id >> 4) {
            SglType::DATA_BLOCK => SglDescriptor::DataBlock {
                address,
                length,
                subtype,
            },
            SglType::BIT_BUCKET => SglDescriptor::BitBucket { length, subtype },
            SglType::SEGMENT => SglDescriptor::Segment {
                address,
                length,
                subtype,
            },
            SglType::LAST_SEGMENT => SglDescriptor::LastSegment {
                address,
                length,
                subtype,
            },
            SglType::KEYED_DATA_BLOCK => {
                let l = get_bytes::<8, 3, N>(b);
                SglDescriptor::KeyedDataBlock {
                    address,
                    length: u32::from_le_bytes([l[0], l[1], l[2], 0]),
                    key: get_u32::<11, N>(b),
                    subtype,
                }
            }
            SglType::TRANSPORT_DATA_BLOCK => SglDescriptor::TransportDataBlock {
                address,
                length,
                subtype,
            },
            SglType::VENDOR => SglDescriptor::Vendor {
                bytes: get_bytes::<0, 15, N>(b),
                subtype,
            },
            SglType(t) => {
                return Err(ProtoError::field(
                    "SGL descriptor",
                    "SGL identifier type",
                    15,
                    Expected::OneOf(&[0, 1, 2, 3, 4, 5, 0xF]),
                    u64::from(t),
                ))
            }
        })
    }

    /// Decodes the first 16 bytes of `buf` (an SGL segment in memory).
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        Self::from_bytes(array::<SGL_DESCRIPTOR_LEN>(buf, "SGL descriptor")?)
    }
}

/// The data pointer of an SQE, read according to PSDT. Chosen by the transport: the PCIe
/// driver fills PRPs from its per-qpair PRP list pages, the TCP initiator one SGL descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPointer {
    /// PRP entry 1 and 2 (IOVAs; PRP2 may point to a PRP list).
    Prp {
        /// PRP entry 1.
        prp1: u64,
        /// PRP entry 2 or the PRP list address.
        prp2: u64,
    },
    /// One SGL descriptor (PSDT 01b).
    Sgl(SglDescriptor),
}

impl DataPointer {
    /// No data: a zero PRP pair.
    pub const NONE_PRP: DataPointer = DataPointer::Prp { prp1: 0, prp2: 0 };
    /// No data over NVMe/TCP: a transport data block of length 0.
    pub const NONE_TCP: DataPointer = DataPointer::Sgl(SglDescriptor::transport(0));
}

/// A submission queue entry as raw fields. Every 64-byte pattern is a valid `Sqe`; the typed
/// views ([`Sqe::fuse`], [`Sqe::psdt`], [`Sqe::data_pointer`], [`Command::decode`]) check what
/// they read. Built by initiators/drivers per command (no heap), decoded by the target from each
/// CapsuleCmd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sqe {
    /// Opcode.
    pub opcode: u8,
    /// FUSE (bits 1:0) and PSDT (bits 7:6).
    pub flags: u8,
    /// Command identifier.
    pub cid: u16,
    /// Namespace id; for Fabrics commands the low byte is FCTYPE.
    pub nsid: u32,
    /// Command dword 2.
    pub cdw2: u32,
    /// Command dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// The data pointer bytes (24..40); see [`Sqe::data_pointer`].
    pub dptr: [u8; 16],
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
}

const WHAT: &str = "SQE";

impl Sqe {
    /// An entry with `opcode` and `cid` and everything else zero.
    pub const fn new(opcode: u8, cid: u16) -> Self {
        Sqe {
            opcode,
            flags: 0,
            cid,
            nsid: 0,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            dptr: [0; 16],
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        }
    }

    /// The 64 bytes of this entry.
    #[inline]
    pub fn to_bytes(&self) -> [u8; SQE_LEN] {
        const N: usize = SQE_LEN;
        let mut b = [0u8; N];
        put_u8::<0, N>(&mut b, self.opcode);
        put_u8::<1, N>(&mut b, self.flags);
        put_u16::<2, N>(&mut b, self.cid);
        put_u32::<4, N>(&mut b, self.nsid);
        put_u32::<8, N>(&mut b, self.cdw2);
        put_u32::<12, N>(&mut b, self.cdw3);
        put_u64::<16, N>(&mut b, self.mptr);
        put_bytes::<24, 16, N>(&mut b, &self.dptr);
        put_u32::<40, N>(&mut b, self.cdw10);
        put_u32::<44, N>(&mut b, self.cdw11);
        put_u32::<48, N>(&mut b, self.cdw12);
        put_u32::<52, N>(&mut b, self.cdw13);
        put_u32::<56, N>(&mut b, self.cdw14);
        put_u32::<60, N>(&mut b, self.cdw15);
        b
    }

    /// Writes the entry into the first 64 bytes of `out` (an SQ slot, a CapsuleCmd header);
    /// returns 64.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProtoError> {
        *array_mut::<SQE_LEN>(out, WHAT)? = self.to_bytes();
        Ok(SQE_LEN)
    }

    /// The entry in 64 bytes.
    pub fn from_bytes(b: &[u8; SQE_LEN]) -> Self {
        const N: usize = SQE_LEN;
        Sqe {
            opcode: get_u8::<0, N>(b),
            flags: get_u8::<1, N>(b),
            cid: get_u16::<2, N>(b),
            nsid: get_u32::<4, N>(b),
            cdw2: get_u32::<8, N>(b),
            cdw3: get_u32::<12, N>(b),
            mptr: get_u64::<16, N>(b),
            dptr: get_bytes::<24, 16, N>(b),
            cdw10: get_u32::<40, N>(b),
            cdw11: get_u32::<44, N>(b),
            cdw12: get_u32::<48, N>(b),
            cdw13: get_u32::<52, N>(b),
            cdw14: get_u32::<56, N>(b),
            cdw15: get_u32::<60, N>(b),
        }
    }

    /// Decodes the first 64 bytes of `buf`; `Err` only if it is shorter.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        Ok(Self::from_bytes(array::<SQE_LEN>(buf, WHAT)?))
    }

    /// The Fabrics command type (byte 4), meaningful when `opcode` is [`FABRICS_OPCODE`].
    pub const fn fctype(&self) -> u8 {
        self.nsid as u8
    }

    /// FUSE; `Err` for the reserved value 11b.
    pub fn fuse(&self) -> Result<Fuse, ProtoError> {
        match self.flags & 0x3 {
            0 => Ok(Fuse::Normal),
            1 => Ok(Fuse::First),
            2 => Ok(Fuse::Second),
            v => Err(ProtoError::field(
                WHAT,
                "FUSE",
                1,
                Expected::Range { min: 0, max: 2 },
                u64::from(v),
            )),
        }
    }

    /// Sets FUSE, keeping PSDT.
    pub fn set_fuse(&mut self, fuse: Fuse) {
        let v = match fuse {
            Fuse::Normal => 0,
            Fuse::First => 1,
            Fuse::Second => 2,
        };
        self.flags = (self.flags & !0x3) | v;
    }

    /// PSDT; `Err` for the reserved value 11b.
    pub fn psdt(&self) -> Result<Psdt, ProtoError> {
        match self.flags >> 6 {
            0 => Ok(Psdt::Prp),
            1 => Ok(Psdt::SglContiguousMetadata),
            2 => Ok(Psdt::SglMetadataSgl),
            v => Err(ProtoError::field(
                WHAT,
                "PSDT",
                1,
                Expected::Range { min: 0, max: 2 },
                u64::from(v),
            )),
        }
    }

    /// The data pointer read according to PSDT.
    pub fn data_pointer(&self) -> Result<DataPointer, ProtoError> {
        match self.psdt()? {
            Psdt::Prp => Ok(DataPointer::Prp {
                prp1: u64::from_le_bytes(get_bytes::<0, 8, 16>(&self.dptr)),
                prp2: u64::from_le_bytes(get_bytes::<8, 8, 16>(&self.dptr)),
            }),
            Psdt::SglContiguousMetadata | Psdt::SglMetadataSgl => SglDescriptor::from_bytes(&self.dptr)
                .map(DataPointer::Sgl)
                .map_err(|e| match e {
                    ProtoError::Field {
                        what,
                        field,
                        offset,
                        expected,
                        found,
                    } => ProtoError::Field {
                        what,
                        field,
                        offset: offset + 24,
                        expected,
                        found,
                    },
                    other => other,
                }),
        }
    }

    /// Sets the data pointer and PSDT to match (PRP → 00b; SGL → 01b unless PSDT already said
    /// 10b). `Err` only for an SGL descriptor that cannot be encoded.
    #[inline]
    pub fn set_data_pointer(&mut self, dp: DataPointer) -> Result<(), ProtoError> {
        match dp {
            DataPointer::Prp { prp1, prp2 } => {
                put_u64::<0, 16>(&mut self.dptr, prp1);
                put_u64::<8, 16>(&mut self.dptr, prp2);
                self.flags &= 0x3F;
            }
            DataPointer::Sgl(d) => {
                self.dptr = d.to_bytes()?;
                if self.flags >> 6 != 2 {
                    self.flags = (self.flags & 0x3F) | 0x40;
                }
            }
        }
        Ok(())
    }
}

/// Which queue an SQE arrived on; decides whether opcodes are admin or NVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Queue 0.
    Admin,
    /// Queues 1..N.
    Io,
}

/// Feature identifiers of Get/Set Features (CDW10 bits 7:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureId(pub u8);

impl FeatureId {
    /// Arbitration.
    pub const ARBITRATION: FeatureId = FeatureId(0x01);
    /// Power management.
    pub const POWER_MANAGEMENT: FeatureId = FeatureId(0x02);
    /// Temperature threshold.
    pub const TEMPERATURE_THRESHOLD: FeatureId = FeatureId(0x04);
    /// Error recovery.
    pub const ERROR_RECOVERY: FeatureId = FeatureId(0x05);
    /// Volatile write cache (bit 0 WCE).
    pub const VOLATILE_WRITE_CACHE: FeatureId = FeatureId(0x06);
    /// Number of queues ([`QueueCounts`]).
    pub const NUMBER_OF_QUEUES: FeatureId = FeatureId(0x07);
    /// Interrupt coalescing.
    pub const INTERRUPT_COALESCING: FeatureId = FeatureId(0x08);
    /// Interrupt vector configuration.
    pub const INTERRUPT_VECTOR_CONFIG: FeatureId = FeatureId(0x09);
    /// Write atomicity normal.
    pub const WRITE_ATOMICITY: FeatureId = FeatureId(0x0A);
    /// Asynchronous event configuration ([`AsyncEventConfig`]).
    pub const ASYNC_EVENT_CONFIG: FeatureId = FeatureId(0x0B);
    /// Autonomous power state transition.
    pub const AUTONOMOUS_POWER_STATE: FeatureId = FeatureId(0x0C);
    /// Timestamp.
    pub const TIMESTAMP: FeatureId = FeatureId(0x0E);
    /// Keep alive timer (CDW11 = KATO in ms).
    pub const KEEP_ALIVE_TIMER: FeatureId = FeatureId(0x0F);
    /// Host behavior support.
    pub const HOST_BEHAVIOR: FeatureId = FeatureId(0x16);
}

/// The Number of Queues feature: CDW11 of Set Features, DW0 of its completion (NSQ in bits 15:0,
/// NCQ in 31:16, both zero-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// I/O submission queues, zero-based.
    pub nsq_0based: u16,
    /// I/O completion queues, zero-based.
    pub ncq_0based: u16,
}

impl QueueCounts {
    /// The dword value.
    pub const fn to_dword(self) -> u32 {
        self.nsq_0based as u32 | (self.ncq_0based as u32) << 16
    }

    /// Reads the dword.
    pub const fn from_dword(v: u32) -> Self {
        QueueCounts {
            nsq_0based: v as u16,
            ncq_0based: (v >> 16) as u16,
        }
    }
}

/// The Asynchronous Event Configuration feature (CDW11), with the bits Linux arms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsyncEventConfig(pub u32);

impl AsyncEventConfig {
    /// Bits 7:0: SMART / health critical warnings.
    pub const SMART_MASK: u32 = 0xFF;
    /// Bit 8: namespace attribute notices.
    pub const NS_ATTRIBUTE: u32 = 1 << 8;
    /// Bit 9: firmware activation notices.
    pub const FW_ACTIVATION: u32 = 1 << 9;
    /// Bit 11: ANA change notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
    /// Bit 31: discovery log page change notices.
    pub const DISCOVERY_LOG_CHANGE: u32 = 1 << 31;
}

/// Create I/O Completion Queue (admin 05h). The queue's base address goes in PRP1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateIoCq {
    /// Queue id (CDW10 15:0).
    pub qid: u16,
    /// Queue entries, zero-based (CDW10 31:16).
    pub qsize_0based: u16,
    /// PC: physically contiguous (CDW11 bit 0).
    pub physically_contiguous: bool,
    /// IEN: interrupts enabled (CDW11 bit 1); the polled driver leaves it clear.
    pub interrupts_enabled: bool,
    /// IV: interrupt vector (CDW11 31:16).
    pub interrupt_vector: u16,
}

/// Create I/O Submission Queue (admin 01h). The queue's base address goes in PRP1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateIoSq {
    /// Queue id (CDW10 15:0).
    pub qid: u16,
    /// Queue entries, zero-based (CDW10 31:16).
    pub qsize_0based: u16,
    /// PC: physically contiguous (CDW11 bit 0).
    pub physically_contiguous: bool,
    /// QPRIO (CDW11 bits 2:1; only with weighted round robin).
    pub priority: u8,
    /// The completion queue this SQ posts to (CDW11 31:16).
    pub cqid: u16,
    /// NVM set id (CDW12 15:0).
    pub nvm_set_id: u16,
}

/// Identify (admin 06h): 4096 bytes of data selected by CNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identify {
    /// Namespace id (for namespace CNS values; the starting point for the active list).
    pub nsid: u32,
    /// Controller or namespace structure (CDW10 7:0).
    pub cns: Cns,
    /// Controller id (CDW10 31:16).
    pub cntid: u16,
    /// Command set identifier (CDW11 31:24).
    pub csi: u8,
}

/// Get Log Page (admin 02h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetLogPage {
    /// Namespace id (FFFFFFFFh for controller-wide pages).
    pub nsid: u32,
    /// Log page id (CDW10 7:0).
    pub lid: LogPageId,
    /// Log specific field (CDW10 14:8, 7 bits).
    pub lsp: u8,
    /// Retain asynchronous event (CDW10 bit 15).
    pub rae: bool,
    /// Dwords to return, zero-based (NUMDU:NUMDL, CDW11 15:0 and CDW10 31:16).
    pub numd_0based: u32,
    /// Log specific identifier (CDW11 31:16).
    pub lsi: u16,
    /// Byte offset into the page (CDW13:CDW12), a multiple of 4.
    pub offset_bytes: u64,
    /// UUID index (CDW14 6:0).
    pub uuid_index: u8,
    /// Command set identifier (CDW14 31:24).
    pub csi: u8,
}

impl GetLogPage {
    /// A request for `len_bytes` (a non-zero multiple of 4, at most 2^34) of page `lid` from
    /// `offset_bytes`, everything else zero.
    pub fn new(nsid: u32, lid: LogPageId, offset_bytes: u64, len_bytes: u64) -> Result<Self, ProtoError> {
        if len_bytes == 0 || !len_bytes.is_multiple_of(4) || len_bytes > 1 << 34 {
            return Err(ProtoError::field(
                "Get Log Page",
                "NUMD",
                40,
                Expected::Text("a non-zero multiple of 4 bytes up to 2^34"),
                len_bytes,
            ));
        }
        Ok(GetLogPage {
            nsid,
            lid,
            lsp: 0,
            rae: false,
            numd_0based: (len_bytes / 4 - 1) as u32,
            lsi: 0,
            offset_bytes,
            uuid_index: 0,
            csi: 0,
        })
    }

    /// Bytes requested: (NUMD + 1) × 4.
    pub const fn len_bytes(&self) -> u64 {
        (self.numd_0based as u64 + 1) * 4
    }
}

/// Set Features (admin 09h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetFeatures {
    /// Namespace id (namespace-specific features), else 0.
    pub nsid: u32,
    /// Feature (CDW10 7:0).
    pub fid: FeatureId,
    /// SV: save across power cycles (CDW10 bit 31).
    pub save: bool,
    /// The feature value (CDW11).
    pub value: u32,
}

/// Get Features (admin 0Ah). The result comes back in DW0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetFeatures {
    /// Namespace id (namespace-specific features), else 0.
    pub nsid: u32,
    /// Feature (CDW10 7:0).
    pub fid: FeatureId,
    /// SEL (CDW10 10:8): 0 current, 1 default, 2 saved, 3 supported capabilities.
    pub select: u8,
    /// Feature-specific input (CDW11).
    pub cdw11: u32,
}

/// Admin commands (queue 0, or a PCIe admin queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCommand {
    /// Delete I/O SQ `qid` (CDW10 15:0).
    DeleteIoSq {
        /// Queue id.
        qid: u16,
    },
    /// Create I/O SQ.
    CreateIoSq(CreateIoSq),
    /// Get Log Page.
    GetLogPage(GetLogPage),
    /// Delete I/O CQ `qid` (CDW10 15:0).
    DeleteIoCq {
        /// Queue id.
        qid: u16,
    },
    /// Create I/O CQ.
    CreateIoCq(CreateIoCq),
    /// Identify.
    Identify(Identify),
    /// Abort command `cid` on SQ `sqid` (CDW10 15:0 and 31:16). DW0 bit 0 of the completion
    /// set means "not aborted".
    Abort {
        /// The SQ of the command to abort.
        sqid: u16,
        /// Its CID.
        cid: u16,
    },
    /// Set Features.
    SetFeatures(SetFeatures),
    /// Get Features.
    GetFeatures(GetFeatures),
    /// Asynchronous Event Request: completes when an event happens.
    AsyncEventRequest,
    /// Keep Alive.
    KeepAlive,
}

/// Connect (Fabrics type 01h). Its [`ConnectData`] travels in the capsule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect {
    /// Record format (SQE 40, u16); 0 is the only one defined.
    pub recfmt: u16,
    /// Queue id (SQE 42): 0 admin, else I/O.
    pub qid: u16,
    /// Submission queue size, zero-based (SQE 44).
    pub sqsize_0based: u16,
    /// Connect attributes (SQE 46): bit 2 disables SQ flow control.
    pub cattr: u8,
    /// Keep alive timeout in ms (SQE 48; admin queue only, 0 disables).
    pub kato_ms: u32,
}

impl Connect {
    /// CATTR bit 2: the host disables SQ flow control (SQHD FFFFh, C2HData SUCCESS allowed).
    pub const CATTR_DISABLE_SQ_FLOW_CONTROL: u8 = 1 << 2;

    /// True if CATTR asks for SQ flow control to be disabled.
    pub const fn sq_flow_control_disabled(&self) -> bool {
        self.cattr & Self::CATTR_DISABLE_SQ_FLOW_CONTROL != 0
    }
}

/// Fabrics commands (opcode 7Fh on any queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FabricsCommand {
    /// Property Set: ATTRIB (SQE 40 bits 2:0) size, OFST (SQE 44), VALUE (SQE 48, u64).
    PropertySet {
        /// Access size.
        size: PropertySize,
        /// Property offset ([`crate::props`]).
        offset: u32,
        /// Value (low 4 bytes for a 4-byte property).
        value: u64,
    },
    /// Connect.
    Connect(Connect),
    /// Property Get: ATTRIB size, OFST; the value returns in DW0 (and DW1).
    PropertyGet {
        /// Access size.
        size: PropertySize,
        /// Property offset.
        offset: u32,
    },
    /// Disconnect this queue: RECFMT (SQE 40).
    Disconnect {
        /// Record format; 0.
        recfmt: u16,
    },
}

/// Read, Write and Compare (NVM 02h, 01h, 05h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadWrite {
    /// Namespace id.
    pub nsid: u32,
    /// Starting LBA (CDW11:CDW10).
    pub slba: u64,
    /// Number of logical blocks, zero-based (CDW12 15:0).
    pub nlb_0based: u16,
    /// Force unit access (CDW12 bit 30).
    pub fua: bool,
    /// Limited retry (CDW12 bit 31).
    pub limited_retry: bool,
}

impl ReadWrite {
    /// Blocks transferred (NLB + 1).
    pub const fn block_count(&self) -> u32 {
        self.nlb_0based as u32 + 1
    }
}

/// Write Zeroes (NVM 08h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteZeroes {
    /// Namespace id.
    pub nsid: u32,
    /// Starting LBA (CDW11:CDW10).
    pub slba: u64,
    /// Number of logical blocks, zero-based (CDW12 15:0).
    pub nlb_0based: u16,
    /// Deallocate (CDW12 bit 25).
    pub deallocate: bool,
    /// Force unit access (CDW12 bit 30).
    pub fua: bool,
    /// Limited retry (CDW12 bit 31).
    pub limited_retry: bool,
}

impl WriteZeroes {
    /// Blocks zeroed (NLB + 1).
    pub const fn block_count(&self) -> u32 {
        self.nlb_0based as u32 + 1
    }
}

/// Dataset Management (NVM 09h). The ranges ([`DsmRange`]) travel as command data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetManagement {
    /// Namespace id.
    pub nsid: u32,
    /// Number of ranges, zero-based (CDW10 7:0).
    pub nr_0based: u8,
    /// Integral dataset for read (CDW11 bit 0).
    pub integral_read: bool,
    /// Integral dataset for write (CDW11 bit 1).
    pub integral_write: bool,
    /// Deallocate (CDW11 bit 2): the unmap Keel maps to.
    pub deallocate: bool,
}

impl DatasetManagement {
    /// Ranges carried (NR + 1).
    pub const fn range_count(&self) -> usize {
        self.nr_0based as usize + 1
    }
}

/// NVM I/O commands (I/O queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmCommand {
    /// Flush namespace `nsid` (FFFFFFFFh: all, if VWC says so).
    Flush {
        /// Namespace id.
        nsid: u32,
    },
    /// Write.
    Write(ReadWrite),
    /// Read.
    Read(ReadWrite),
    /// Compare.
    Compare(ReadWrite),
    /// Write Zeroes.
    WriteZeroes(WriteZeroes),
    /// Dataset Management.
    DatasetManagement(DatasetManagement),
}

/// Any command Keel understands, decoded from an [`Sqe`] or encoded into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// An admin command.
    Admin(AdminCommand),
    /// A Fabrics command.
    Fabrics(FabricsCommand),
    /// An NVM I/O command.
    Nvm(NvmCommand),
}

fn unknown_opcode(op: u8) -> ProtoError {
    ProtoError::field(
        WHAT,
        "OPC",
        0,
        Expected::Text("an opcode of this queue's command set"),
        u64::from(op),
    )
}

const fn lo16(v: u32) -> u16 {
    v as u16
}

const fn hi16(v: u32) -> u16 {
    (v >> 16) as u16
}

const fn bit(v: u32, n: u32) -> bool {
    v & (1 << n) != 0
}

const fn flag(b: bool, n: u32) -> u32 {
    (b as u32) << n
}

const fn pair(lo: u16, hi: u16) -> u32 {
    lo as u32 | (hi as u32) << 16
}

impl Command {
    /// Reads the typed command from `sqe`, which arrived on a `queue` of this kind. Called by
    /// the target for each capsule (on the qpair's reactor) and by the PCIe controller model.
    /// `Err` names the field; [`ProtoError::status`] is the completion to send back.
    pub fn decode(sqe: &Sqe, queue: QueueKind) -> Result<Command, ProtoError> {
        if sqe.opcode == FABRICS_OPCODE {
            return decode_fabrics(sqe).map(Command::Fabrics);
        }
        match queue {
            QueueKind::Admin => decode_admin(sqe).map(Command::Admin),
            QueueKind::Io => decode_nvm(sqe).map(Command::Nvm),
        }
    }

    /// The SQE for this command with identifier `cid` and data pointer `dp` (PSDT follows `dp`).
    /// `Err` only if a field does not fit its bits (a 7-bit LSP, a 3-bit SEL, …) or the SGL
    /// descriptor cannot be encoded.
    #[inline]
    pub fn to_sqe(&self, cid: u16, dp: DataPointer) -> Result<Sqe, ProtoError> {
        let mut s = match self {
            Command::Admin(c) => encode_admin(c)?,
            Command::Fabrics(c) => encode_fabrics(c)?,
            Command::Nvm(c) => encode_nvm(c),
        };
        s.cid = cid;
        s.set_data_pointer(dp)?;
        Ok(s)
    }
}

fn decode_admin(s: &Sqe) -> Result<AdminCommand, ProtoError> {
    use admin_opcode as op;
    Ok(match s.opcode {
        op::DELETE_IO_SQ => AdminCommand::DeleteIoSq { qid: lo16(s.cdw10) },
        op::CREATE_IO_SQ => AdminCommand::CreateIoSq(CreateIoSq {
            qid: lo16(s.cdw10),
            qsize_0based: hi16(s.cdw10),
            physically_contiguous: bit(s.cdw11, 0),
            priority: ((s.cdw11 >> 1) & 0x3) as u8,
            cqid: hi16(s.cdw11),
            nvm_set_id: lo16(s.cdw12),
        }),
        op::GET_LOG_PAGE => {
            let offset_bytes = u64::from(s.cdw13) << 32 | u64::from(s.cdw12);
            if !offset_bytes.is_multiple_of(4) {
                return Err(ProtoError::field(
                    "Get Log Page",
                    "LPOL",
                    48,
                    Expected::MultipleOf(4),
                    offset_bytes,
                ));
            }
            AdminCommand::GetLogPage(GetLogPage {
                nsid: s.nsid,
                lid: LogPageId(s.cdw10 as u8),
                lsp: ((s.cdw10 >> 8) & 0x7F) as u8,
                rae: bit(s.cdw10, 15),
                numd_0based: pair(hi16(s.cdw10), lo16(s.cdw11)),
                lsi: hi16(s.cdw11),
                offset_bytes,
                uuid_index: (s.cdw14 & 0x7F) as u8,
                csi: (s.cdw14 >> 24) as u8,
            })
        }
        op::DELETE_IO_CQ => AdminCommand::DeleteIoCq { qid: lo16(s.cdw10) },
        op::CREATE_IO_CQ => AdminCommand::CreateIoCq(CreateIoCq {
            qid: lo16(s.cdw10),
            qsize_0based: hi16(s.cdw10),
            physically_contiguous: bit(s.cdw11, 0),
            interrupts_enabled: bit(s.cdw11, 1),
            interrupt_vector: hi16(s.cdw11),
        }),
        op::IDENTIFY => AdminCommand::Identify(Identify {
            nsid: s.nsid,
            cns: Cns(s.cdw10 as u8),
            cntid: hi16(s.cdw10),
            csi: (s.cdw11 >> 24) as u8,
        }),
        op::ABORT => AdminCommand::Abort {
            sqid: lo16(s.cdw10),
            cid: hi16(s.cdw10),
        },
        op::SET_FEATURES => AdminCommand::SetFeatures(SetFeatures {
            nsid: s.nsid,
            fid: FeatureId(s.cdw10 as u8),
            save: bit(s.cdw10, 31),
            value: s.cdw11,
        }),
        op::GET_FEATURES => AdminCommand::GetFeatures(GetFeatures {
            nsid: s.nsid,
            fid: FeatureId(s.cdw10 as u8),
            select: ((s.cdw10 >> 8) & 0x7) as u8,
            cdw11: s.cdw11,
        }),
        op::ASYNC_EVENT_REQUEST => AdminCommand::AsyncEventRequest,
        op::KEEP_ALIVE => AdminCommand::KeepAlive,
        other => return Err(unknown_opcode(other)),
    })
}

fn encode_admin(c: &AdminCommand) -> Result<Sqe, ProtoError> {
    use crate::cqe::check_bits;
    use admin_opcode as op;
    const GLP: &str = "Get Log Page";
    Ok(match *c {
        AdminCommand::DeleteIoSq { qid } => Sqe {
            cdw10: u32::from(qid),
            ..Sqe::new(op::DELETE_IO_SQ, 0)
        },
        AdminCommand::CreateIoSq(q) => {
            check_bits("Create I/O SQ", "QPRIO", 44, u64::from(q.priority), 2)?;
            Sqe {
                cdw10: pair(q.qid, q.qsize_0based),
                cdw11: flag(q.physically_contiguous, 0) | u32::from(q.priority) << 1 | u32::from(q.cqid) << 16,
                cdw12: u32::from(q.nvm_set_id),
                ..Sqe::new(op::CREATE_IO_SQ, 0)
            }
        }
        AdminCommand::GetLogPage(g) => {
            check_bits(GLP, "LSP", 41, u64::from(g.lsp), 7)?;
            check_bits(GLP, "UUID index", 56, u64::from(g.uuid_index), 7)?;
            if !g.offset_bytes.is_multiple_of(4) {
                return Err(ProtoError::field(
                    GLP,
                    "LPOL",
                    48,
                    Expected::MultipleOf(4),
                    g.offset_bytes,
                ));
            }
            Sqe {
                nsid: g.nsid,
                cdw10: u32::from(g.lid.0)
                    | u32::from(g.lsp) << 8
                    | flag(g.rae, 15)
                    | u32::from(lo16(g.numd_0based)) << 16,
                cdw11: u32::from(hi16(g.numd_0based)) | u32::from(g.lsi) << 16,
                cdw12: g.offset_bytes as u32,
                cdw13: (g.offset_bytes >> 32) as u32,
                cdw14: u32::from(g.uuid_index) | u32::from(g.csi) << 24,
                ..Sqe::new(op::GET_LOG_PAGE, 0)
            }
        }
        AdminCommand::DeleteIoCq { qid } => Sqe {
            cdw10: u32::from(qid),
            ..Sqe::new(op::DELETE_IO_CQ, 0)
        },
        AdminCommand::CreateIoCq(q) => Sqe {
            cdw10: pair(q.qid, q.qsize_0based),
            cdw11: flag(q.physically_contiguous, 0)
                | flag(q.interrupts_enabled, 1)
                | u32::from(q.interrupt_vector) << 16,
            ..Sqe::new(op::CREATE_IO_CQ, 0)
        },
        AdminCommand::Identify(i) => Sqe {
            nsid: i.nsid,
            cdw10: u32::from(i.cns.0) | u32::from(i.cntid) << 16,
            cdw11: u32::from(i.csi) << 24,
            ..Sqe::new(op::IDENTIFY, 0)
        },
        AdminCommand::Abort { sqid, cid } => Sqe {
            cdw10: pair(sqid, cid),
            ..Sqe::new(op::ABORT, 0)
        },
        AdminCommand::SetFeatures(f) => Sqe {
            nsid: f.nsid,
            cdw10: u32::from(f.fid.0) | flag(f.save, 31),
            cdw11: f.value,
            ..Sqe::new(op::SET_FEATURES, 0)
        },
        AdminCommand::GetFeatures(f) => {
            check_bits("Get Features", "SEL", 41, u64::from(f.select), 3)?;
            Sqe {
                nsid: f.nsid,
                cdw10: u32::from(f.fid.0) | u32::from(f.select) << 8,
                cdw11: f.cdw11,
                ..Sqe::new(op::GET_FEATURES, 0)
            }
        }
        AdminCommand::AsyncEventRequest => Sqe::new(op::ASYNC_EVENT_REQUEST, 0),
        AdminCommand::KeepAlive => Sqe::new(op::KEEP_ALIVE, 0),
    })
}

fn property_size(s: &Sqe) -> Result<PropertySize, ProtoError> {
    match s.cdw10 & 0x7 {
        0 => Ok(PropertySize::Four),
        1 => Ok(PropertySize::Eight),
        v => Err(ProtoError::field(
            "Property command",
            "ATTRIB",
            40,
            Expected::OneOf(&[0, 1]),
            u64::from(v),
        )),
    }
}

fn decode_fabrics(s: &Sqe) -> Result<FabricsCommand, ProtoError> {
    Ok(match s.fctype() {
        fctype::PROPERTY_SET => FabricsCommand::PropertySet {
            size: property_size(s)?,
            offset: s.cdw11,
            value: u64::from(s.cdw13) << 32 | u64::from(s.cdw12),
        },
        fctype::CONNECT => FabricsCommand::Connect(Connect {
            recfmt: lo16(s.cdw10),
            qid: hi16(s.cdw10),
            sqsize_0based: lo16(s.cdw11),
            cattr: (s.cdw11 >> 16) as u8,
            kato_ms: s.cdw12,
        }),
        fctype::PROPERTY_GET => FabricsCommand::PropertyGet {
            size: property_size(s)?,
            offset: s.cdw11,
        },
        fctype::DISCONNECT => FabricsCommand::Disconnect { recfmt: lo16(s.cdw10) },
        other => {
            return Err(ProtoError::field(
                WHAT,
                "FCTYPE",
                4,
                Expected::OneOf(&[0x00, 0x01, 0x04, 0x08]),
                u64::from(other),
            ))
        }
    })
}

fn encode_fabrics(c: &FabricsCommand) -> Result<Sqe, ProtoError> {
    let base = |t: u8| Sqe {
        nsid: u32::from(t),
        ..Sqe::new(FABRICS_OPCODE, 0)
    };
    let attrib = |size: PropertySize| match size {
        PropertySize::Four => 0,
        PropertySize::Eight => 1,
    };
    Ok(match *c {
        FabricsCommand::PropertySet { size, offset, value } => Sqe {
            cdw10: attrib(size),
            cdw11: offset,
            cdw12: value as u32,
            cdw13: (value >> 32) as u32,
            ..base(fctype::PROPERTY_SET)
        },
        FabricsCommand::Connect(c) => Sqe {
            cdw10: pair(c.recfmt, c.qid),
            cdw11: u32::from(c.sqsize_0based) | u32::from(c.cattr) << 16,
            cdw12: c.kato_ms,
            ..base(fctype::CONNECT)
        },
        FabricsCommand::PropertyGet { size, offset } => Sqe {
            cdw10: attrib(size),
            cdw11: offset,
            ..base(fctype::PROPERTY_GET)
        },
        FabricsCommand::Disconnect { recfmt } => Sqe {
            cdw10: u32::from(recfmt),
            ..base(fctype::DISCONNECT)
        },
    })
}

fn decode_rw(s: &Sqe) -> ReadWrite {
    ReadWrite {
        nsid: s.nsid,
        slba: u64::from(s.cdw11) << 32 | u64::from(s.cdw10),
        nlb_0based: lo16(s.cdw12),
        fua: bit(s.cdw12, 30),
        limited_retry: bit(s.cdw12, 31),
    }
}

fn decode_nvm(s: &Sqe) -> Result<NvmCommand, ProtoError> {
    use nvm_opcode as op;
    Ok(match s.opcode {
        op::FLUSH => NvmCommand::Flush { nsid: s.nsid },
        op::WRITE => NvmCommand::Write(decode_rw(s)),
        op::READ => NvmCommand::Read(decode_rw(s)),
        op::COMPARE => NvmCommand::Compare(decode_rw(s)),
        op::WRITE_ZEROES => NvmCommand::WriteZeroes(WriteZeroes {
            nsid: s.nsid,
            slba: u64::from(s.cdw11) << 32 | u64::from(s.cdw10),
            nlb_0based: lo16(s.cdw12),
            deallocate: bit(s.cdw12, 25),
            fua: bit(s.cdw12, 30),
            limited_retry: bit(s.cdw12, 31),
        }),
        op::DATASET_MANAGEMENT => NvmCommand::DatasetManagement(DatasetManagement {
            nsid: s.nsid,
            nr_0based: s.cdw10 as u8,
            integral_read: bit(s.cdw11, 0),
            integral_write: bit(s.cdw11, 1),
            deallocate: bit(s.cdw11, 2),
        }),
        other => return Err(unknown_opcode(other)),
    })
}

impl NvmCommand {
    /// The entry of this I/O command with CID `cid` and a PRP data pointer (PSDT 00b) — the
    /// infallible form of [`Command::to_sqe`] the PCIe driver uses per I/O (NVM commands and
    /// PRPs always encode). No allocation.
    #[inline]
    pub fn to_sqe_prp(&self, cid: u16, prp1: u64, prp2: u64) -> Sqe {
        let mut s = encode_nvm(self);
        s.cid = cid;
        put_u64::<0, 16>(&mut s.dptr, prp1);
        put_u64::<8, 16>(&mut s.dptr, prp2);
        s.flags &= 0x3F;
        s
    }
}

#[inline]
fn encode_rw(opcode: u8, rw: &ReadWrite) -> Sqe {
    Sqe {
        nsid: rw.nsid,
        cdw10: rw.slba as u32,
        cdw11: (rw.slba >> 32) as u32,
        cdw12: u32::from(rw.nlb_0based) | flag(rw.fua, 30) | flag(rw.limited_retry, 31),
        ..Sqe::new(opcode, 0)
    }
}

#[inline]
fn encode_nvm(c: &NvmCommand) -> Sqe {
    use nvm_opcode as op;
    match c {
        NvmCommand::Flush { nsid } => Sqe {
            nsid: *nsid,
            ..Sqe::new(op::FLUSH, 0)
        },
        NvmCommand::Write(rw) => encode_rw(op::WRITE, rw),
        NvmCommand::Read(rw) => encode_rw(op::READ, rw),
        NvmCommand::Compare(rw) => encode_rw(op::COMPARE, rw),
        NvmCommand::WriteZeroes(w) => Sqe {
            nsid: w.nsid,
            cdw10: w.slba as u32,
            cdw11: (w.slba >> 32) as u32,
            cdw12: u32::from(w.nlb_0based) | flag(w.deallocate, 25) | flag(w.fua, 30) | flag(w.limited_retry, 31),
            ..Sqe::new(op::WRITE_ZEROES, 0)
        },
        NvmCommand::DatasetManagement(d) => Sqe {
            nsid: d.nsid,
            cdw10: u32::from(d.nr_0based),
            cdw11: flag(d.integral_read, 0) | flag(d.integral_write, 1) | flag(d.deallocate, 2),
            ..Sqe::new(op::DATASET_MANAGEMENT, 0)
        },
    }
}

/// The 1024-byte data of a Connect command: HOSTID (0), CNTLID (16), SUBNQN (256), HOSTNQN
/// (512). Built by the initiator into its capsule buffer; decoded by the target from the
/// in-capsule data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectData {
    /// The host identifier (a UUID, binary).
    pub hostid: [u8; 16],
    /// FFFFh on an admin Connect (dynamic controller model); the admin queue's CNTLID on an
    /// I/O Connect.
    pub cntlid: u16,
    /// The subsystem the host connects to.
    pub subnqn: NqnField,
    /// The host's NQN.
    pub hostnqn: NqnField,
}

impl ConnectData {
    /// CNTLID value of an admin Connect asking the target to pick a controller.
    pub const DYNAMIC_CNTLID: u16 = 0xFFFF;
    /// Byte offset of SUBNQN (the IPO a target reports for an unknown subsystem).
    pub const SUBNQN_OFFSET: usize = 256;
    /// Byte offset of HOSTNQN (the IPO for a host that may not connect).
    pub const HOSTNQN_OFFSET: usize = 512;

    /// Writes the 1024 bytes into `out` (reserved bytes zeroed); returns 1024.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ProtoError> {
        const N: usize = CONNECT_DATA_LEN;
        let b = array_mut::<N>(out, "Connect data")?;
        b.fill(0);
        put_bytes::<0, 16, N>(b, &self.hostid);
        put_u16::<16, N>(b, self.cntlid);
        put_bytes::<256, NQN_FIELD_LEN, N>(b, self.subnqn.raw());
        put_bytes::<512, NQN_FIELD_LEN, N>(b, self.hostnqn.raw());
        Ok(N)
    }

    /// Reads the 1024 bytes; `Err` (with the field's offset, for the IPO) if an NQN is not
    /// NUL-terminated.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        const N: usize = CONNECT_DATA_LEN;
        const W: &str = "Connect data";
        let b = array::<N>(buf, W)?;
        Ok(ConnectData {
            hostid: get_bytes::<0, 16, N>(b),
            cntlid: get_u16::<16, N>(b),
            subnqn: NqnField::decode_at(&get_bytes::<256, NQN_FIELD_LEN, N>(b), W, "SUBNQN", Self::SUBNQN_OFFSET)?,
            hostnqn: NqnField::decode_at(
                &get_bytes::<512, NQN_FIELD_LEN, N>(b),
                W,
                "HOSTNQN",
                Self::HOSTNQN_OFFSET,
            )?,
        })
    }
}

/// One Dataset Management range: context attributes (0), length in blocks (4, one-based),
/// starting LBA (8). Built by the initiator into the command's data buffer; decoded by the
/// target to turn deallocate into unmaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DsmRange {
    /// Context attributes.
    pub attributes: u32,
    /// Length in logical blocks (one-based: 1 is one block).
    pub block_count: u32,
    /// Starting LBA.
    pub slba: u64,
}

impl DsmRange {
    /// The 16 bytes of the range.
    pub fn to_bytes(&self) -> [u8; DSM_RANGE_LEN] {
        let mut b = [0u8; DSM_RANGE_LEN];
        put_u32::<0, DSM_RANGE_LEN>(&mut b, self.attributes);
        put_u32::<4, DSM_RANGE_LEN>(&mut b, self.block_count);
        put_u64::<8, DSM_RANGE_LEN>(&mut b, self.slba);
        b
    }

    /// The range in 16 bytes.
    pub fn from_bytes(b: &[u8; DSM_RANGE_LEN]) -> Self {
        DsmRange {
            attributes: get_u32::<0, DSM_RANGE_LEN>(b),
            block_count: get_u32::<4, DSM_RANGE_LEN>(b),
            slba: get_u64::<8, DSM_RANGE_LEN>(b),
        }
    }

    /// Writes `ranges` back to back into `out`; returns the bytes written. `Err` if there are
    /// none, more than 256, or `out` is too small.
    pub fn encode_list(ranges: &[DsmRange], out: &mut [u8]) -> Result<usize, ProtoError> {
        if ranges.is_empty() || ranges.len() > DSM_MAX_RANGES {
            return Err(ProtoError::field(
                "Dataset Management",
                "NR",
                40,
                Expected::Range {
                    min: 1,
                    max: DSM_MAX_RANGES as u64,
                },
                ranges.len() as u64,
            ));
        }
        let need = ranges.len() * DSM_RANGE_LEN;
        crate::wire::need_out(out, need, "Dataset Management ranges")?;
        for (r, chunk) in ranges.iter().zip(out.chunks_exact_mut(DSM_RANGE_LEN)) {
            chunk.copy_from_slice(&r.to_bytes());
        }
        Ok(need)
    }

    /// The first `count` ranges of `data` (the command's data buffer). `Err` if `count` is not
    /// 1..=256 or `data` is shorter than `count` ranges. No allocation: the iterator reads the
    /// buffer in place.
    pub fn decode_list(data: &[u8], count: usize) -> Result<impl Iterator<Item = DsmRange> + '_, ProtoError> {
        if count == 0 || count > DSM_MAX_RANGES {
            return Err(ProtoError::field(
                "Dataset Management",
                "NR",
                40,
                Expected::Range {
                    min: 1,
                    max: DSM_MAX_RANGES as u64,
                },
                count as u64,
            ));
        }
        let need = count * DSM_RANGE_LEN;
        let list = data.get(..need).ok_or(ProtoError::Truncated {
            what: "Dataset Management ranges",
            need,
            have: data.len(),
        })?;
        Ok(list
            .chunks_exact(DSM_RANGE_LEN)
            .filter_map(|c| c.first_chunk::<DSM_RANGE_LEN>())
            .map(DsmRange::from_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_sqe_prp_is_to_sqe_with_prps() {
        let rw = ReadWrite {
            nsid: 1,
            slba: 0x1_2345_6789,
            nlb_0based: 7,
            fua: true,
            limited_retry: false,
        };
        for c in [
            NvmCommand::Read(rw),
            NvmCommand::Write(rw),
            NvmCommand::Flush { nsid: 1 },
            NvmCommand::WriteZeroes(WriteZeroes {
                nsid: 1,
                slba: 9,
                nlb_0based: 3,
                deallocate: true,
                fua: false,
                limited_retry: true,
            }),
            NvmCommand::DatasetManagement(DatasetManagement {
                nsid: 1,
                nr_0based: 0,
                integral_read: false,
                integral_write: false,
                deallocate: true,
            }),
        ] {
            let dp = DataPointer::Prp {
                prp1: 0x10_0200,
                prp2: 0x20_0000,
            };
            assert_eq!(
                c.to_sqe_prp(0x77, 0x10_0200, 0x20_0000),
                Command::Nvm(c).to_sqe(0x77, dp).unwrap()
            );
        }
    }

    #[test]
    fn layout_of_every_field() {
        let s = Sqe {
            opcode: 0x11,
            flags: 0x42,
            cid: 0x3344,
            nsid: 0x5566_7788,
            cdw2: 0x0102_0304,
            cdw3: 0x0506_0708,
            mptr: 0x1112_1314_1516_1718,
            dptr: std::array::from_fn(|i| 0xA0 + i as u8),
            cdw10: 0x2021_2223,
            cdw11: 0x2425_2627,
            cdw12: 0x2829_2A2B,
            cdw13: 0x2C2D_2E2F,
            cdw14: 0x3031_3233,
            cdw15: 0x3435_3637,
        };
        let b = s.to_bytes();
        assert_eq!(&b[..4], &[0x11, 0x42, 0x44, 0x33]);
        assert_eq!(&b[4..8], &[0x88, 0x77, 0x66, 0x55]);
        assert_eq!(&b[16..24], &0x1112_1314_1516_1718u64.to_le_bytes());
        assert_eq!(b[24], 0xA0);
        assert_eq!(b[39], 0xAF);
        assert_eq!(&b[40..44], &[0x23, 0x22, 0x21, 0x20]);
        assert_eq!(&b[60..64], &[0x37, 0x36, 0x35, 0x34]);
        assert_eq!(Sqe::from_bytes(&b), s);
    }

    #[test]
    fn tcp_sgl_forms() {
        // nvme-tcp.md §6.1: in-capsule data = identifier 01h, host memory / no data = 5Ah.
        let mut s = Sqe::new(nvm_opcode::WRITE, 1);
        s.set_data_pointer(DataPointer::Sgl(SglDescriptor::in_capsule(4096)))
            .unwrap();
        let b = s.to_bytes();
        assert_eq!(b[1], 0x40, "PSDT 01b");
        assert_eq!(b[39], 0x01);
        assert_eq!(&b[32..36], &4096u32.to_le_bytes());
        s.set_data_pointer(DataPointer::NONE_TCP).unwrap();
        assert_eq!(s.to_bytes()[39], 0x5A);
        assert_eq!(s.data_pointer().unwrap(), DataPointer::NONE_TCP);
        s.set_data_pointer(DataPointer::Prp {
            prp1: 0x20_0000,
            prp2: 0x20_1000,
        })
        .unwrap();
        assert_eq!(s.flags & 0xC0, 0);
        assert_eq!(
            s.data_pointer().unwrap(),
            DataPointer::Prp {
                prp1: 0x20_0000,
                prp2: 0x20_1000
            }
        );
    }

    #[test]
    fn keyed_sgl_layout() {
        let d = SglDescriptor::KeyedDataBlock {
            address: 0x1122_3344_5566_7788,
            length: 0xABCDEF,
            key: 0x0102_0304,
            subtype: SglSubtype::INVALIDATE_KEY,
        };
        let b = d.to_bytes().unwrap();
        assert_eq!(&b[8..11], &[0xEF, 0xCD, 0xAB]);
        assert_eq!(&b[11..15], &[0x04, 0x03, 0x02, 0x01]);
        assert_eq!(b[15], 0x4F);
        assert_eq!(SglDescriptor::from_bytes(&b).unwrap(), d);
        let too_long = SglDescriptor::KeyedDataBlock {
            address: 0,
            length: 1 << 24,
            key: 0,
            subtype: SglSubtype::ADDRESS,
        };
        assert!(too_long.to_bytes().is_err());
    }

    #[test]
    fn reserved_sgl_type_and_psdt() {
        let mut s = Sqe::new(nvm_opcode::READ, 9);
        s.flags = 0x40;
        s.dptr[15] = 0x60;
        match s.data_pointer() {
            Err(e @ ProtoError::Field { offset: 39, .. }) => {
                assert_eq!(e.status().code, crate::cqe::StatusCode::SGL_DESCRIPTOR_TYPE_INVALID)
            }
            other => panic!("{other:?}"),
        }
        s.flags = 0xC0;
        assert!(matches!(s.psdt(), Err(ProtoError::Field { field: "PSDT", .. })));
        s.flags = 0x03;
        assert!(s.fuse().is_err());
        s.set_fuse(Fuse::Second);
        assert_eq!(s.fuse(), Ok(Fuse::Second));
    }

    #[test]
    fn discovery_get_log_page_cdw10() {
        // nvme-tcp.md §11: 1024 bytes of LID 70h with RAE = 1 -> CDW10 0x00FF8070;
        // (1 + 2 records) x 1024 bytes, RAE = 0 -> 0x02FF0070.
        let mut g = GetLogPage::new(0, LogPageId::DISCOVERY, 0, 1024).unwrap();
        g.rae = true;
        let s = Command::Admin(AdminCommand::GetLogPage(g))
            .to_sqe(7, DataPointer::NONE_TCP)
            .unwrap();
        assert_eq!(s.cdw10, 0x00FF_8070);
        let g2 = GetLogPage::new(0, LogPageId::DISCOVERY, 0, 3 * 1024).unwrap();
        let s2 = Command::Admin(AdminCommand::GetLogPage(g2))
            .to_sqe(7, DataPointer::NONE_TCP)
            .unwrap();
        assert_eq!(s2.cdw10, 0x02FF_0070);
        match Command::decode(&s, QueueKind::Admin).unwrap() {
            Command::Admin(AdminCommand::GetLogPage(back)) => {
                assert_eq!(back, g);
                assert_eq!(back.len_bytes(), 1024);
            }
            other => panic!("{other:?}"),
        }
        assert!(GetLogPage::new(0, LogPageId::DISCOVERY, 0, 6).is_err());
        let mut bad = s;
        bad.cdw12 = 2;
        assert!(matches!(
            Command::decode(&bad, QueueKind::Admin),
            Err(ProtoError::Field { field: "LPOL", .. })
        ));
    }

    #[test]
    fn pcie_queue_creation_values() {
        // nvme-pcie.md §12: Create I/O CQ CDW10 = (15<<16)|1, CDW11 = 1;
        // Create I/O SQ CDW10 = (15<<16)|1, CDW11 = (1<<16)|1.
        let cq = AdminCommand::CreateIoCq(CreateIoCq {
            qid: 1,
            qsize_0based: 15,
            physically_contiguous: true,
            interrupts_enabled: false,
            interrupt_vector: 0,
        });
        let s = Command::Admin(cq)
            .to_sqe(
                3,
                DataPointer::Prp {
                    prp1: 0x20_3000,
                    prp2: 0,
                },
            )
            .unwrap();
        assert_eq!((s.opcode, s.cdw10, s.cdw11), (0x05, (15 << 16) | 1, 1));
        let sq = AdminCommand::CreateIoSq(CreateIoSq {
            qid: 1,
            qsize_0based: 15,
            physically_contiguous: true,
            priority: 0,
            cqid: 1,
            nvm_set_id: 0,
        });
        let s = Command::Admin(sq)
            .to_sqe(
                4,
                DataPointer::Prp {
                    prp1: 0x20_2000,
                    prp2: 0,
                },
            )
            .unwrap();
        assert_eq!((s.opcode, s.cdw10, s.cdw11), (0x01, (15 << 16) | 1, (1 << 16) | 1));
        assert_eq!(Command::decode(&s, QueueKind::Admin).unwrap(), Command::Admin(sq));
        // Number of queues n-1 | (n-1) << 16.
        assert_eq!(
            QueueCounts {
                nsq_0based: 3,
                ncq_0based: 3
            }
            .to_dword(),
            0x0003_0003
        );
    }

    #[test]
    fn read_write_fields() {
        // nvme-pcie.md §12 step 8: Write, NSID 1, CDW10/11 = SLBA, CDW12 = NLB-1.
        let w = ReadWrite {
            nsid: 1,
            slba: 0x1_0000_0002,
            nlb_0based: 7,
            fua: true,
            limited_retry: false,
        };
        let s = Command::Nvm(NvmCommand::Write(w))
            .to_sqe(0x1000, DataPointer::NONE_PRP)
            .unwrap();
        assert_eq!((s.opcode, s.nsid, s.cdw10, s.cdw11, s.cdw12), (1, 1, 2, 1, 7 | 1 << 30));
        assert_eq!(w.block_count(), 8);
        assert_eq!(
            Command::decode(&s, QueueKind::Io).unwrap(),
            Command::Nvm(NvmCommand::Write(w))
        );
        // The same opcode on the admin queue is Create I/O SQ, not Write.
        assert!(matches!(
            Command::decode(&s, QueueKind::Admin),
            Ok(Command::Admin(AdminCommand::CreateIoSq(_)))
        ));
        let mut unknown = s;
        unknown.opcode = 0x7E;
        let e = Command::decode(&unknown, QueueKind::Io).unwrap_err();
        assert_eq!(e.status(), crate::cqe::StatusCode::INVALID_OPCODE.dnr());
    }

    /// The Connect capsule Linux sends for the admin queue (nvme-tcp.md §9.1, §13 step 2):
    /// opcode 7Fh, PSDT 01b, FCTYPE 1, SGL 01h of 1024 bytes, QID 0, SQSIZE 31, KATO 5000.
    #[test]
    fn linux_admin_connect() {
        let mut b = [0u8; 64];
        b[0] = 0x7F;
        b[1] = 0x40;
        b[4] = 0x01;
        b[32..36].copy_from_slice(&1024u32.to_le_bytes());
        b[39] = 0x01;
        b[44] = 31;
        b[48..52].copy_from_slice(&5000u32.to_le_bytes());
        let s = Sqe::from_bytes(&b);
        let c = Connect {
            recfmt: 0,
            qid: 0,
            sqsize_0based: 31,
            cattr: 0,
            kato_ms: 5000,
        };
        assert_eq!(
            Command::decode(&s, QueueKind::Admin).unwrap(),
            Command::Fabrics(FabricsCommand::Connect(c))
        );
        assert_eq!(
            s.data_pointer().unwrap(),
            DataPointer::Sgl(SglDescriptor::in_capsule(1024))
        );
        let back = Command::Fabrics(FabricsCommand::Connect(c))
            .to_sqe(0, DataPointer::Sgl(SglDescriptor::in_capsule(1024)))
            .unwrap();
        assert_eq!(back.to_bytes(), b);

        let data = ConnectData {
            hostid: [0x5A; 16],
            cntlid: ConnectData::DYNAMIC_CNTLID,
            subnqn: NqnField::new("nqn.2016-06.io.spdk:cnode1").unwrap(),
            hostnqn: NqnField::new("nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555").unwrap(),
        };
        let mut raw = [0xEEu8; 1024];
        assert_eq!(data.encode(&mut raw), Ok(1024));
        assert_eq!(&raw[16..18], &[0xFF, 0xFF]);
        assert_eq!(&raw[18..256], &[0u8; 238][..]);
        assert_eq!(&raw[256..262], b"nqn.20");
        assert_eq!(&raw[512..516], b"nqn.");
        assert_eq!(&raw[768..], &[0u8; 256][..]);
        assert_eq!(ConnectData::decode(&raw), Ok(data));
        raw[256..512].fill(b'x');
        assert!(matches!(
            ConnectData::decode(&raw),
            Err(ProtoError::Field { offset: 256, .. })
        ));
    }

    #[test]
    fn property_commands() {
        // nvme-tcp.md §13: Property Set CC = 0x00460001 (4 bytes at 14h); Get CAP (8 bytes).
        let set = FabricsCommand::PropertySet {
            size: PropertySize::Four,
            offset: 0x14,
            value: 0x0046_0001,
        };
        let s = Command::Fabrics(set).to_sqe(2, DataPointer::NONE_TCP).unwrap();
        let b = s.to_bytes();
        assert_eq!((b[0], b[4], b[40]), (0x7F, 0x00, 0));
        assert_eq!(&b[44..48], &[0x14, 0, 0, 0]);
        assert_eq!(&b[48..56], &0x0046_0001u64.to_le_bytes());
        assert_eq!(Command::decode(&s, QueueKind::Admin).unwrap(), Command::Fabrics(set));
        let get = FabricsCommand::PropertyGet {
            size: PropertySize::Eight,
            offset: 0,
        };
        let s = Command::Fabrics(get).to_sqe(3, DataPointer::NONE_TCP).unwrap();
        assert_eq!((s.to_bytes()[4], s.to_bytes()[40]), (0x04, 1));
        assert_eq!(Command::decode(&s, QueueKind::Io).unwrap(), Command::Fabrics(get));
        let mut bad = s;
        bad.cdw10 = 2;
        assert!(matches!(
            Command::decode(&bad, QueueKind::Admin),
            Err(ProtoError::Field { field: "ATTRIB", .. })
        ));
        bad.nsid = u32::from(fctype::AUTHENTICATION_SEND);
        let e = Command::decode(&bad, QueueKind::Admin).unwrap_err();
        assert_eq!(e.status().code, crate::cqe::StatusCode::INVALID_OPCODE);
    }

    #[test]
    fn dsm_ranges() {
        let ranges = [
            DsmRange {
                attributes: 0,
                block_count: 8,
                slba: 0x10,
            },
            DsmRange {
                attributes: 1,
                block_count: 1,
                slba: 0xFFFF_FFFF_0000,
            },
        ];
        let mut buf = [0u8; 4096];
        assert_eq!(DsmRange::encode_list(&ranges, &mut buf), Ok(32));
        assert_eq!(&buf[4..8], &8u32.to_le_bytes());
        assert_eq!(&buf[8..16], &0x10u64.to_le_bytes());
        let back: Vec<_> = DsmRange::decode_list(&buf, 2).unwrap().collect();
        assert_eq!(back, ranges);
        assert!(DsmRange::decode_list(&buf[..31], 2).is_err());
        assert!(DsmRange::decode_list(&buf, 0).is_err());
        assert!(DsmRange::decode_list(&buf, 257).is_err());
        let dsm = DatasetManagement {
            nsid: 1,
            nr_0based: 1,
            integral_read: false,
            integral_write: false,
            deallocate: true,
        };
        let s = Command::Nvm(NvmCommand::DatasetManagement(dsm))
            .to_sqe(5, DataPointer::NONE_TCP)
            .unwrap();
        assert_eq!((s.opcode, s.cdw10, s.cdw11), (0x09, 1, 4));
        assert_eq!(dsm.range_count(), 2);
    }
}
