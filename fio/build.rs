//! Links the engine `-z nodelete`: fio `dlclose`s it once per job, and the process-wide Keel
//! instance (statics, the bdev registry, thread-local reactor state with destructors) must stay
//! mapped until the process exits.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
}
