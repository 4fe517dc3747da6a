//! Shared set-up of the model tests: a model, a controller attached to it, a buffer pool.
#![allow(dead_code)]

use std::sync::Arc;

use keel_nvme_pcie::model::{Model, ModelConfig};
use keel_nvme_pcie::{Controller, ControllerOpts, DataBuf, DmaBuf, DmaPool};

pub struct Rig {
    pub model: Arc<Model>,
    pub ctrlr: Controller<Model>,
    pub pool: DmaPool,
}

pub fn rig(cfg: ModelConfig, opts: ControllerOpts) -> Rig {
    let model = Model::new(cfg);
    let ctrlr = Controller::attach(model.clone(), model.clone(), opts).expect("attach to the model");
    let pool = DmaPool::new(&*model, 16, 128 * 1024).expect("pool");
    Rig { model, ctrlr, pool }
}

pub fn data(buf: &DmaBuf, len_bytes: u32) -> DataBuf {
    DataBuf {
        iova: buf.iova,
        len_bytes,
    }
}

/// A pattern that names its offset and a seed, so misplaced data shows.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 9) as u8)
        .collect()
}
