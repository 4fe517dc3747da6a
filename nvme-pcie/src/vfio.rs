//! Taking a PCI function through VFIO (legacy container/group API, type1 IOMMU): checks with
//! messages that say what to do, the ioctl sequence of nvme-pcie.md §9.2, BAR0, and DMA
//! mapping with an IOVA allocator. Safe code over [`crate::sys`].

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::dma::{DmaMapper, IovaAllocator};
use crate::error::PcieError;
use crate::sys::{self, DmaRegion, Mmio};

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: libc::c_ulong = 1;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const GROUP_VIABLE: u32 = 1;
const REGION_MMAP: u32 = 4;
const BAR0_INDEX: u32 = 0;
const CONFIG_INDEX: u32 = 7;
const PCI_COMMAND: u64 = 4;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
const DMA_READ_WRITE: u32 = 1 | 2;

/// A PCI address in its full form, `DDDD:BB:DD.F`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PciAddress(String);

impl PciAddress {
    /// Parses `0000:00:04.0` (lowercase hex, as sysfs names devices). The short form `00:04.0`
    /// is refused: VFIO wants the full one.
    pub fn parse(s: &str) -> Result<PciAddress, PcieError> {
        let bad = |why: &str| PcieError::NoSuchDevice {
            bdf: s.to_string(),
            why: why.to_string(),
        };
        let b = s.as_bytes();
        let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
        if b.len() != 12 || b[4] != b':' || b[7] != b':' || b[10] != b'.' {
            return Err(bad("not of the form DDDD:BB:DD.F"));
        }
        if !hex(0..4) || !hex(5..7) || !hex(8..10) || !(b'0'..=b'7').contains(&b[11]) {
            return Err(bad("not hexadecimal domain/bus/device with function 0-7"));
        }
        Ok(PciAddress(s.to_ascii_lowercase()))
    }

    /// The address text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn sysfs(&self) -> PathBuf {
        Path::new("/sys/bus/pci/devices").join(&self.0)
    }
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One PCI function opened through VFIO: its container, group and device fds, BAR0 mapped, bus
/// mastering on, and the DMA mappings made for it. Opened at attach on the admin core; the BAR
/// goes to the controller and its queue pairs (`Arc`). Dropping it unmaps every DMA mapping and
/// closes the fds (vfio-pci then clears bus mastering and resets the function).
pub struct VfioDevice {
    addr: PciAddress,
    // Field order is drop order: DMA mappings are undone in Drop, then the device, group and
    // container close.
    maps: Mutex<Maps>,
    bar0: Arc<Mmio>,
    device: File,
    _group: File,
    container: File,
}

struct Maps {
    iovas: IovaAllocator,
    regions: Vec<(u64, Arc<DmaRegion>)>,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> PcieError + '_ {
    move |source| PcieError::File {
        path: path.to_path_buf(),
        source,
    }
}

impl VfioDevice {
    /// Opens `addr`: checks it exists, is bound to vfio-pci and sits in a viable IOMMU group,
    /// then runs the container/group/device ioctls, enables memory decoding and bus mastering,
    /// and maps BAR0. Needs root (or ownership of /dev/vfio/<group>). Set-up path.
    pub fn open(addr: &PciAddress) -> Result<Arc<VfioDevice>, PcieError> {
        let dev = addr.sysfs();
        if !dev.exists() {
            return Err(PcieError::NoSuchDevice {
                bdf: addr.to_string(),
                why: format!("{} does not exist", dev.display()),
            });
        }
        let driver = std::fs::read_link(dev.join("driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        if driver.as_deref() != Some("vfio-pci") {
            return Err(PcieError::NotBoundToVfio {
                bdf: addr.to_string(),
                driver: driver.unwrap_or_else(|| "no driver".into()),
            });
        }
        let group: u32 = std::fs::read_link(dev.join("iommu_group"))
            .ok()
            .and_then(|p| p.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse().ok()))
            .ok_or_else(|| PcieError::NoIommuGroup { bdf: addr.to_string() })?;

        let cpath = Path::new("/dev/vfio/vfio");
        let container = OpenOptions::new()
            .read(true)
            .write(true)
            .open(cpath)
            .map_err(file_err(cpath))?;
        let cfd = container.as_raw_fd();
        let v = sys::ioctl_value(cfd, sys::GET_API_VERSION, 0).map_err(|e| PcieError::os("VFIO_GET_API_VERSION", e))?;
        if v != VFIO_API_VERSION {
            return Err(PcieError::Unsupported(format!("VFIO API version {v}, expected 0")));
        }
        let iommu_type = if sys::ioctl_value(cfd, sys::CHECK_EXTENSION, VFIO_TYPE1V2_IOMMU).unwrap_or(0) == 1 {
            VFIO_TYPE1V2_IOMMU
        } else if sys::ioctl_value(cfd, sys::CHECK_EXTENSION, VFIO_TYPE1_IOMMU).unwrap_or(0) == 1 {
            VFIO_TYPE1_IOMMU
        } else {
            return Err(PcieError::Unsupported(
                "the kernel's VFIO has no type1 IOMMU backend: modprobe vfio_iommu_type1".into(),
            ));
        };

        let gpath = PathBuf::from(format!("/dev/vfio/{group}"));
        let group_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&gpath)
            .map_err(file_err(&gpath))?;
        let gfd = group_file.as_raw_fd();
        let mut status = sys::GroupStatus { argsz: 8, flags: 0 };
        sys::ioctl_struct(gfd, sys::GROUP_GET_STATUS, &mut status)
            .map_err(|e| PcieError::os("VFIO_GROUP_GET_STATUS", e))?;
        if status.flags & GROUP_VIABLE == 0 {
            return Err(PcieError::GroupNotViable {
                bdf: addr.to_string(),
                group,
            });
        }
        let mut c = cfd;
        sys::ioctl_struct(gfd, sys::GROUP_SET_CONTAINER, &mut c)
            .map_err(|e| PcieError::os("VFIO_GROUP_SET_CONTAINER", e))?;
        sys::ioctl_value(cfd, sys::SET_IOMMU, iommu_type).map_err(|e| PcieError::os("VFIO_SET_IOMMU", e))?;
        let device = sys::group_get_device_fd(&group_file, addr.as_str())
            .map_err(|e| PcieError::os(format!("VFIO_GROUP_GET_DEVICE_FD {addr}"), e))?;
        let dfd = device.as_raw_fd();
        let mut info = sys::DeviceInfo {
            argsz: 24,
            ..Default::default()
        };
        sys::ioctl_struct(dfd, sys::DEVICE_GET_INFO, &mut info)
            .map_err(|e| PcieError::os("VFIO_DEVICE_GET_INFO", e))?;
        if info.num_regions <= CONFIG_INDEX {
            return Err(PcieError::Unsupported(format!(
                "{addr} has {} VFIO regions; a PCI function has at least 8",
                info.num_regions
            )));
        }
        let region = |index| -> Result<sys::RegionInfo, PcieError> {
            let mut r = sys::RegionInfo {
                argsz: 32,
                index,
                ..Default::default()
            };
            sys::ioctl_struct(dfd, sys::DEVICE_GET_REGION_INFO, &mut r)
                .map_err(|e| PcieError::os(format!("VFIO_DEVICE_GET_REGION_INFO {index}"), e))?;
            Ok(r)
        };
        let bar = region(BAR0_INDEX)?;
        let config = region(CONFIG_INDEX)?;
        if bar.size < 0x2000 || bar.flags & REGION_MMAP == 0 {
            return Err(PcieError::Unsupported(format!(
                "{addr}: BAR0 is {:#x} bytes (flags {:#x}); an NVMe controller's is at least 8 KiB and mappable",
                bar.size, bar.flags
            )));
        }
        // Memory space and bus master on (vfio-pci leaves bus mastering off).
        let mut cmd = [0u8; 2];
        device
            .read_exact_at(&mut cmd, config.offset + PCI_COMMAND)
            .map_err(|e| PcieError::os("read the PCI command register", e))?;
        let v = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        device
            .write_all_at(&v.to_le_bytes(), config.offset + PCI_COMMAND)
            .map_err(|e| PcieError::os("write the PCI command register", e))?;
        let bar0 = Mmio::map(&device, bar.offset, bar.size as usize).map_err(|e| PcieError::os("mmap BAR0", e))?;
        Ok(Arc::new(VfioDevice {
            addr: addr.clone(),
            maps: Mutex::new(Maps {
                iovas: IovaAllocator::x86_default(),
                regions: Vec::new(),
            }),
            bar0: Arc::new(bar0),
            device,
            _group: group_file,
            container,
        }))
    }

    /// The device's address.
    pub fn address(&self) -> &PciAddress {
        &self.addr
    }

    /// BAR0, for [`crate::ctrlr::Controller::attach`].
    pub fn bar0(&self) -> Arc<Mmio> {
        self.bar0.clone()
    }

    /// Function-level reset (VFIO_DEVICE_RESET), then memory decoding and bus mastering on
    /// again. For a controller that does not come back from CC.EN = 0.
    pub fn function_reset(&self) -> Result<(), PcieError> {
        sys::ioctl_value(self.device.as_raw_fd(), sys::DEVICE_RESET, 0)
            .map_err(|e| PcieError::os("VFIO_DEVICE_RESET", e))?;
        Ok(())
    }

    /// Bytes of DMA memory mapped so far.
    pub fn mapped_bytes(&self) -> u64 {
        let m = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        m.regions.iter().map(|(_, r)| r.len() as u64).sum()
    }
}

impl DmaMapper for VfioDevice {
    fn map(&self, region: Arc<DmaRegion>) -> Result<u64, PcieError> {
        let mut m = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let len = region.len() as u64;
        let iova = m.iovas.alloc(len)?;
        let mut arg = sys::DmaMap {
            argsz: 32,
            flags: DMA_READ_WRITE,
            vaddr: region.vaddr(),
            iova,
            size: len,
        };
        match sys::ioctl_struct(self.container.as_raw_fd(), sys::IOMMU_MAP_DMA, &mut arg) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                return Err(PcieError::MemlockTooLow {
                    len_bytes: len,
                    limit: sys::memlock_limit().map_or("unlimited".into(), |b| format!("{b} bytes")),
                })
            }
            Err(e) => {
                return Err(PcieError::os(
                    format!("VFIO_IOMMU_MAP_DMA of {len} bytes at IOVA {iova:#x}"),
                    e,
                ))
            }
        }
        m.regions.push((iova, region));
        Ok(iova)
    }
}

impl Drop for VfioDevice {
    fn drop(&mut self) {
        let m = self.maps.get_mut().unwrap_or_else(|p| p.into_inner());
        for (iova, r) in m.regions.drain(..) {
            let mut arg = sys::DmaUnmap {
                argsz: 24,
                flags: 0,
                iova,
                size: r.len() as u64,
            };
            // Best effort: closing the container unmaps everything anyway.
            let _ = sys::ioctl_struct(self.container.as_raw_fd(), sys::IOMMU_UNMAP_DMA, &mut arg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        assert_eq!(PciAddress::parse("0000:00:04.0").unwrap().as_str(), "0000:00:04.0");
        assert_eq!(PciAddress::parse("0000:AF:00.7").unwrap().as_str(), "0000:af:00.7");
        for bad in [
            "00:04.0",
            "0000:00:04.8",
            "0000-00:04.0",
            "0000:00:04.0 ",
            "zzzz:00:04.0",
        ] {
            let e = PciAddress::parse(bad).unwrap_err().to_string();
            assert!(e.contains("0000:00:04.0"), "{e}");
        }
    }

    #[test]
    fn a_missing_device_says_so() {
        let e = VfioDevice::open(&PciAddress::parse("0000:ff:1f.7").unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
    }
}
