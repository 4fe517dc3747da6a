//! `md_set_stripe_cache`: the stripe-cache size of a parity array (Linux's `stripe_cache_size`,
//! in entries of one page per member; default 256, limits 17..32768). The layout keeps the
//! number; each core's lane follows it from its poller (`crate::stripe`).

use super::MdRegistry;
use crate::MdError;

impl MdRegistry {
    /// Sets array `name`'s stripe cache to `entries`. Control path (any thread); an
    /// `InvalidParam` on `entries` outside 17..32768, `Unsupported` for levels without parity.
    pub fn set_stripe_cache(&self, name: &str, entries: u32) -> Result<(), MdError> {
        let array = self.find(name)?;
        array.layout.set_stripe_cache(entries)
    }
}
