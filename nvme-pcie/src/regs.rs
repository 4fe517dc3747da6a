//! Register access as a trait, so the same driver code runs against the device's BAR0
//! ([`Mmio`](crate::sys::Mmio)) and against the in-process [`Model`](crate::model::Model).

#![forbid(unsafe_code)]

use crate::sys::Mmio;

/// 32/64-bit access to an NVMe controller's register space (BAR0: registers below 0x1000,
/// doorbells from 0x1000). Implemented by the mapped BAR and by the controller model.
///
/// `write32` must order every earlier store to DMA memory before the register write (a
/// release fence; see [`crate::sys`]): the driver relies on it for "the SQE is visible before
/// its doorbell".
pub trait Registers {
    /// Reads the 32-bit register at `off`.
    fn read32(&self, off: usize) -> u32;
    /// Writes the 32-bit register at `off`.
    fn write32(&self, off: usize, v: u32);
    /// Reads a 64-bit register as two 32-bit reads, low first.
    fn read64(&self, off: usize) -> u64 {
        u64::from(self.read32(off)) | u64::from(self.read32(off + 4)) << 32
    }
    /// Writes a 64-bit register as two 32-bit writes, low first.
    fn write64(&self, off: usize, v: u64) {
        self.write32(off, v as u32);
        self.write32(off + 4, (v >> 32) as u32);
    }
}

impl Registers for Mmio {
    #[inline]
    fn read32(&self, off: usize) -> u32 {
        Mmio::read32(self, off)
    }
    #[inline]
    fn write32(&self, off: usize, v: u32) {
        Mmio::write32(self, off, v)
    }
}

/// Register offsets of BAR0 (nvme-pcie.md §2).
pub mod off {
    /// CAP, 8 bytes.
    pub const CAP: usize = 0x00;
    /// VS.
    pub const VS: usize = 0x08;
    /// CC.
    pub const CC: usize = 0x14;
    /// CSTS.
    pub const CSTS: usize = 0x1C;
    /// AQA.
    pub const AQA: usize = 0x24;
    /// ASQ, 8 bytes.
    pub const ASQ: usize = 0x28;
    /// ACQ, 8 bytes.
    pub const ACQ: usize = 0x30;
}
