//! The target: the `"nvmf"` bdev module, its control path (transport, subsystems, namespaces,
//! hosts, listeners), the accept pollers and the registry of controllers and qpairs.
//!
//! All state sits behind one mutex, taken by the RPC methods on the main core, by accept
//! pollers (main core) and by qpairs at Connect and when they close — never per I/O.

use std::cell::RefCell;
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use keel_bdev::{BdevModule, BdevRegistry, ConfigCall, ConfigEntry, ModuleDone, Subsystem as ModSubsystem};
use keel_nvme_proto::nqn::{self, DISCOVERY_NQN};
use keel_reactor::{current, try_current, CoreId, Cores, PollStatus, PollerHandle};
use serde_json::{json, Value};

use crate::config::{hex, ListenAddress, NsOpts, SubsystemOpts, TransportOpts};
use crate::ctrlr::Controller;
use crate::error::NvmfError;
use crate::subsystem::{Namespace, Subsystem};

/// The module name (and its save_config subsystem's).
pub const MODULE: &str = "nvmf";

/// The `"nvmf"` save_config subsystem: after the bdevs its namespaces serve.
pub const SUBSYSTEM: ModSubsystem = ModSubsystem {
    name: "nvmf",
    depends_on: &["bdev"],
};

/// What `get_qpairs` shows of a connection; shared between the qpair on its core and the
/// control path.
pub(crate) struct QpairShared {
    pub id: u64,
    pub core: CoreId,
    pub peer: String,
    /// The listener it came through.
    pub listen: ListenAddress,
    /// `(cntlid, qid, subsystem NQN)` once connected.
    pub connected: Mutex<Option<(u16, u16, String)>>,
    stop: AtomicBool,
}

impl QpairShared {
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn on(&self, subnqn: &str) -> bool {
        self.connected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(_, _, n)| n == subnqn)
    }
}

/// A bound listening socket, shared by every subsystem that listens on its address.
struct ListenerRec {
    addr: ListenAddress,
    sock: Mutex<Option<TcpListener>>,
    /// Subsystems (the discovery subsystem included) listening on it.
    users: usize,
}

struct State {
    transport: Option<TransportOpts>,
    /// The discovery subsystem first, then NVM subsystems in creation order.
    subsystems: Vec<Arc<Subsystem>>,
    listeners: Vec<Arc<Mutex<ListenerRec>>>,
    ctrlrs: Vec<Arc<Controller>>,
    qpairs: Vec<Arc<QpairShared>>,
    next_cntlid: u16,
    last_core: Option<CoreId>,
    /// Discovery log generation counter.
    genctr: u64,
    fini: Option<ModuleDone>,
}

/// A subsystem's listing for `nvmf_get_subsystems`.
fn subsystem_json(s: &Subsystem) -> Value {
    let c = s.conf();
    let listen: Vec<Value> = c.listeners.iter().map(|l| l.to_json()).collect();
    if s.discovery {
        return json!({
            "nqn": s.nqn, "subtype": "Discovery", "listen_addresses": listen,
            "allow_any_host": true, "hosts": [],
        });
    }
    let hosts: Vec<Value> = c.hosts.iter().map(|h| json!({ "nqn": h })).collect();
    let ns: Vec<Value> = c
        .namespaces
        .iter()
        .map(|n| {
            let mut v = json!({
                "nsid": n.nsid, "bdev_name": n.bdev_name, "name": n.bdev_name,
                "nguid": hex(&n.nguid), "uuid": n.uuid.to_string(),
            });
            if let Some(e) = n.eui64 {
                v["eui64"] = json!(hex(&e));
            }
            v
        })
        .collect();
    json!({
        "nqn": s.nqn, "subtype": "NVMe", "listen_addresses": listen,
        "allow_any_host": c.opts.allow_any_host, "hosts": hosts,
        "serial_number": c.opts.serial_number, "model_number": c.opts.model_number,
        "max_namespaces": c.opts.max_namespaces, "min_cntlid": c.opts.min_cntlid,
        "max_cntlid": c.opts.max_cntlid, "namespaces": ns,
    })
}

/// The NVMe/TCP target of one bdev registry (see the crate essay).
pub struct NvmfTarget {
    me: Weak<NvmfTarget>,
    reg: Weak<BdevRegistry>,
    cores: Cores,
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl BdevModule for NvmfTarget {
    fn init(reg: &Arc<BdevRegistry>) -> Arc<Self> {
        let cores = reg.cores().clone();
        let discovery = Arc::new(Subsystem::new(
            DISCOVERY_NQN.to_string(),
            true,
            SubsystemOpts {
                allow_any_host: true,
                max_namespaces: 0,
                ..SubsystemOpts::default()
            },
        ));
        Arc::new_cyclic(|me| NvmfTarget {
            me: me.clone(),
            reg: Arc::downgrade(reg),
            cores,
            state: Mutex::new(State {
                transport: None,
                subsystems: vec![discovery],
                listeners: Vec::new(),
                ctrlrs: Vec::new(),
                qpairs: Vec::new(),
                next_cntlid: 1,
                last_core: None,
                genctr: 0,
                fini: None,
            }),
            next_id: AtomicU64::new(1),
        })
    }

    fn name(&self) -> &'static str {
        MODULE
    }

    fn subsystem(&self) -> ModSubsystem {
        SUBSYSTEM
    }

    /// Closes every listener, ends every association and reports done when the last qpair
    /// closed; then releases the namespaces.
    fn fini(&self, done: ModuleDone) {
        let mut st = self.lock();
        for l in st.listeners.drain(..) {
            drop(
                l.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sock
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
        }
        for c in &st.ctrlrs {
            c.fail();
        }
        for q in &st.qpairs {
            q.request_stop();
        }
        for s in &st.subsystems {
            for n in s.namespaces() {
                n.release();
            }
        }
        if st.qpairs.is_empty() {
            drop(st);
            done.done();
        } else {
            st.fini = Some(done);
        }
    }

    /// `nvmf_create_transport`, then per NVM subsystem `nvmf_create_subsystem`, its hosts,
    /// namespaces (each needing its bdev) and listeners, then the discovery listeners.
    fn config(&self, _reg: &BdevRegistry) -> Vec<ConfigEntry> {
        let st = self.lock();
        let mut out = Vec::new();
        let call = |method: &'static str, params: Value| ConfigEntry::new(ConfigCall { method, params });
        if let Some(t) = &st.transport {
            out.push(call("nvmf_create_transport", t.to_json()));
        }
        let listener = |nqn: &str, l: &ListenAddress| {
            call(
                "nvmf_subsystem_add_listener",
                json!({"nqn": nqn, "listen_address": l.to_json()}),
            )
        };
        for s in st.subsystems.iter().filter(|s| !s.discovery) {
            let c = s.conf();
            out.push(call(
                "nvmf_create_subsystem",
                json!({
                    "nqn": s.nqn, "serial_number": c.opts.serial_number,
                    "model_number": c.opts.model_number, "allow_any_host": c.opts.allow_any_host,
                    "max_namespaces": c.opts.max_namespaces, "min_cntlid": c.opts.min_cntlid,
                    "max_cntlid": c.opts.max_cntlid,
                }),
            ));
            for h in &c.hosts {
                out.push(call("nvmf_subsystem_add_host", json!({"nqn": s.nqn, "host": h})));
            }
            for n in &c.namespaces {
                let mut ns = json!({
                    "bdev_name": n.bdev_name, "nsid": n.nsid, "uuid": n.uuid.to_string(),
                    "nguid": hex(&n.nguid),
                });
                if let Some(e) = n.eui64 {
                    ns["eui64"] = json!(hex(&e));
                }
                out.push(
                    call("nvmf_subsystem_add_ns", json!({"nqn": s.nqn, "namespace": ns})).needs([n.bdev_name.clone()]),
                );
            }
            for l in &c.listeners {
                out.push(listener(&s.nqn, l));
            }
        }
        if let Some(d) = st.subsystems.iter().find(|s| s.discovery) {
            for l in &d.conf().listeners {
                out.push(listener(&d.nqn, l));
            }
        }
        out
    }
}

impl NvmfTarget {
    /// The target of `reg` (created on first use). Any thread.
    pub fn of(reg: &Arc<BdevRegistry>) -> Arc<NvmfTarget> {
        reg.module::<NvmfTarget>()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn cores(&self) -> &Cores {
        &self.cores
    }

    /// The transport's options (`None` before `nvmf_create_transport`).
    pub fn transport(&self) -> Option<TransportOpts> {
        self.lock().transport
    }

    /// `nvmf_create_transport -t TCP`: one TCP transport per target. Control path.
    pub fn create_transport(&self, opts: TransportOpts) -> Result<(), NvmfError> {
        opts.validate()?;
        let mut st = self.lock();
        if st.transport.is_some() {
            return Err(NvmfError::Exists("Transport type 'TCP' already exists".into()));
        }
        st.transport = Some(opts);
        tracing::info!(?opts, "nvmf: TCP transport created");
        Ok(())
    }

    fn find(st: &State, nqn: &str) -> Result<Arc<Subsystem>, NvmfError> {
        st.subsystems
            .iter()
            .find(|s| s.nqn == nqn)
            .cloned()
            .ok_or_else(|| NvmfError::NotFound(format!("subsystem '{nqn}' does not exist")))
    }

    /// `nvmf_create_subsystem`. Control path.
    pub fn create_subsystem(&self, nqn_text: &str, opts: SubsystemOpts) -> Result<(), NvmfError> {
        let unable = |why: String| NvmfError::Internal(format!("Unable to create subsystem {nqn_text}: {why}"));
        nqn::validate(nqn_text).map_err(|e| unable(e.to_string()))?;
        if nqn_text == DISCOVERY_NQN {
            return Err(unable("the discovery subsystem always exists".into()));
        }
        opts.validate()?;
        let mut st = self.lock();
        if st.subsystems.iter().any(|s| s.nqn == nqn_text) {
            return Err(unable("it already exists".into()));
        }
        st.subsystems
            .push(Arc::new(Subsystem::new(nqn_text.to_string(), false, opts)));
        st.genctr += 1;
        tracing::info!(nqn = nqn_text, "nvmf: subsystem created");
        Ok(())
    }

    /// `nvmf_delete_subsystem`: ends its associations, drops its listeners and releases its
    /// namespaces. Control path.
    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), NvmfError> {
        let mut st = self.lock();
        let s = Self::find(&st, nqn)?;
        if s.discovery {
            return Err(NvmfError::invalid("the discovery subsystem cannot be deleted"));
        }
        st.subsystems.retain(|x| !Arc::ptr_eq(x, &s));
        for c in st.ctrlrs.iter().filter(|c| Arc::ptr_eq(&c.subsys, &s)) {
            c.fail();
        }
        let listeners = std::mem::take(&mut s.conf().listeners);
        for l in &listeners {
            Self::unuse_listener(&mut st, l);
        }
        for n in std::mem::take(&mut s.conf().namespaces) {
            n.release();
        }
        s.bump_ns_generation();
        st.genctr += 1;
        tracing::info!(nqn, "nvmf: subsystem deleted");
        Ok(())
    }

    /// `nvmf_subsystem_add_ns`: returns the NSID. Control path, main core.
    pub fn add_ns(&self, nqn: &str, opts: &NsOpts) -> Result<u32, NvmfError> {
        let s = Self::find(&self.lock(), nqn)?;
        if s.discovery {
            return Err(NvmfError::invalid("the discovery subsystem has no namespaces"));
        }
        let reg = self
            .reg
            .upgrade()
            .ok_or_else(|| NvmfError::Internal("the bdev registry is gone".into()))?;
        {
            let c = s.conf();
            let max = c.opts.max_namespaces;
            if opts.nsid != 0 && (opts.nsid > max || c.namespaces.iter().any(|n| n.nsid == opts.nsid)) {
                return Err(NvmfError::invalid(format!(
                    "nsid {} is in use or over max_namespaces {max}",
                    opts.nsid
                )));
            }
            if c.namespaces.len() as u32 >= max {
                return Err(NvmfError::invalid(format!("subsystem {nqn} has its {max} namespaces")));
            }
        }
        let me = self.me.clone();
        let ev_nqn = nqn.to_string();
        let ev_bdev = opts.bdev_name.clone();
        let desc = reg
            .open(&opts.bdev_name, true, move |_event| {
                if let Some(me) = me.upgrade() {
                    me.bdev_removed(&ev_nqn, &ev_bdev);
                }
            })
            .map_err(|e| NvmfError::invalid(format!("Unable to add ns: bdev {}: {e}", opts.bdev_name)))?;
        let uuid = opts.uuid.unwrap_or(desc.info().uuid);
        let nguid = opts.nguid.unwrap_or(*uuid.as_bytes());
        let mut c = s.conf();
        let nsid = if opts.nsid != 0 {
            opts.nsid
        } else {
            (1..=c.opts.max_namespaces)
                .find(|i| !c.namespaces.iter().any(|n| n.nsid == *i))
                .ok_or_else(|| NvmfError::invalid("no free nsid"))?
        };
        if c.namespaces.iter().any(|n| n.nsid == nsid) {
            return Err(NvmfError::invalid(format!("nsid {nsid} is in use")));
        }
        let ns = Arc::new(Namespace::new(nsid, uuid, nguid, opts.eui64, nqn, desc));
        let at = c.namespaces.partition_point(|n| n.nsid < nsid);
        c.namespaces.insert(at, ns);
        drop(c);
        s.bump_ns_generation();
        self.notify_ns_change(&s, nsid);
        tracing::info!(nqn, nsid, bdev = %opts.bdev_name, "nvmf: namespace added");
        Ok(nsid)
    }

    /// `nvmf_subsystem_remove_ns`. Control path.
    pub fn remove_ns(&self, nqn: &str, nsid: u32) -> Result<(), NvmfError> {
        let s = Self::find(&self.lock(), nqn)?;
        let ns = {
            let mut c = s.conf();
            let at = c
                .namespaces
                .iter()
                .position(|n| n.nsid == nsid)
                .ok_or_else(|| NvmfError::NotFound(format!("namespace {nsid} of {nqn} does not exist")))?;
            c.namespaces.remove(at)
        };
        ns.release();
        s.bump_ns_generation();
        self.notify_ns_change(&s, nsid);
        tracing::info!(nqn, nsid, "nvmf: namespace removed");
        Ok(())
    }

    fn bdev_removed(&self, nqn: &str, bdev: &str) {
        let Ok(s) = Self::find(&self.lock(), nqn) else { return };
        for n in s.namespaces().iter().filter(|n| n.bdev_name == bdev) {
            tracing::info!(nqn, nsid = n.nsid, bdev, "nvmf: bdev removed; removing its namespace");
            let _ = self.remove_ns(nqn, n.nsid);
        }
    }

    fn notify_ns_change(&self, s: &Arc<Subsystem>, nsid: u32) {
        let st = self.lock();
        for c in st.ctrlrs.iter().filter(|c| Arc::ptr_eq(&c.subsys, s)) {
            c.ns_changed(nsid);
        }
    }

    /// `nvmf_subsystem_add_host`. Control path.
    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        nqn::validate(host).map_err(|e| NvmfError::invalid(format!("host NQN: {e}")))?;
        let mut st = self.lock();
        let s = Self::find(&st, nqn)?;
        let mut c = s.conf();
        if c.hosts.iter().any(|h| h == host) {
            return Err(NvmfError::Exists(format!("host {host} is already allowed on {nqn}")));
        }
        c.hosts.push(host.to_string());
        drop(c);
        st.genctr += 1;
        Ok(())
    }

    /// `nvmf_subsystem_remove_host`: also ends that host's associations with the subsystem.
    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        let mut st = self.lock();
        let s = Self::find(&st, nqn)?;
        let mut c = s.conf();
        let before = c.hosts.len();
        c.hosts.retain(|h| h != host);
        if c.hosts.len() == before {
            return Err(NvmfError::NotFound(format!("host {host} is not allowed on {nqn}")));
        }
        let any = c.opts.allow_any_host;
        drop(c);
        if !any {
            for ctrl in st
                .ctrlrs
                .iter()
                .filter(|x| Arc::ptr_eq(&x.subsys, &s) && x.hostnqn == host)
            {
                ctrl.fail();
            }
        }
        st.genctr += 1;
        Ok(())
    }

    /// `nvmf_subsystem_allow_any_host`.
    pub fn allow_any_host(&self, nqn: &str, allow: bool) -> Result<(), NvmfError> {
        let mut st = self.lock();
        let s = Self::find(&st, nqn)?;
        if s.discovery {
            return Err(NvmfError::invalid("the discovery subsystem allows any host"));
        }
        s.conf().opts.allow_any_host = allow;
        st.genctr += 1;
        Ok(())
    }

    /// `nvmf_subsystem_add_listener`: binds the address unless another subsystem already
    /// listens there. Control path.
    pub fn add_listener(&self, nqn: &str, addr: ListenAddress) -> Result<(), NvmfError> {
        let mut st = self.lock();
        if st.transport.is_none() {
            return Err(NvmfError::invalid("the TCP transport must be created first"));
        }
        let s = Self::find(&st, nqn)?;
        if s.conf().listeners.contains(&addr) {
            return Err(NvmfError::Exists(format!(
                "Listener already exists: {}:{}",
                addr.traddr, addr.trsvcid
            )));
        }
        let existing = st
            .listeners
            .iter()
            .find(|l| l.lock().unwrap_or_else(|e| e.into_inner()).addr == addr)
            .cloned();
        match existing {
            Some(l) => l.lock().unwrap_or_else(|e| e.into_inner()).users += 1,
            None => {
                let sa = addr.socket_addr();
                let sock = TcpListener::bind(sa)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|e| NvmfError::invalid(format!("cannot listen on {sa}: {e}")))?;
                let rec = Arc::new(Mutex::new(ListenerRec {
                    addr: addr.clone(),
                    sock: Mutex::new(Some(sock)),
                    users: 1,
                }));
                st.listeners.push(rec.clone());
                let me = self.me.clone();
                let main = self.cores.main_core();
                let start = move || accept_poller(me, rec);
                if try_current().is_some_and(|r| r.core() == main) {
                    start();
                } else if let Err(e) = self.cores.run_on(main, start) {
                    return Err(NvmfError::Internal(format!("cannot reach the main reactor: {e}")));
                }
                tracing::info!(addr = %sa, "nvmf: listening");
            }
        }
        s.conf().listeners.push(addr);
        st.genctr += 1;
        Ok(())
    }

    fn unuse_listener(st: &mut State, addr: &ListenAddress) {
        let Some(pos) = st
            .listeners
            .iter()
            .position(|l| l.lock().unwrap_or_else(|e| e.into_inner()).addr == *addr)
        else {
            return;
        };
        let rec = st.listeners[pos].clone();
        let mut r = rec.lock().unwrap_or_else(|e| e.into_inner());
        r.users -= 1;
        if r.users == 0 {
            drop(r.sock.lock().unwrap_or_else(|e| e.into_inner()).take());
            drop(r);
            st.listeners.remove(pos);
        }
    }

    /// `nvmf_subsystem_remove_listener`: the subsystem's connections through it end; the socket
    /// closes when no subsystem listens there any more.
    pub fn remove_listener(&self, nqn: &str, addr: &ListenAddress) -> Result<(), NvmfError> {
        let mut st = self.lock();
        let s = Self::find(&st, nqn)?;
        {
            let mut c = s.conf();
            let before = c.listeners.len();
            c.listeners.retain(|l| l != addr);
            if c.listeners.len() == before {
                return Err(NvmfError::NotFound(format!(
                    "no listener {}:{} on {nqn}",
                    addr.traddr, addr.trsvcid
                )));
            }
        }
        Self::unuse_listener(&mut st, addr);
        for q in st.qpairs.iter().filter(|q| q.listen == *addr && q.on(nqn)) {
            q.request_stop();
        }
        st.genctr += 1;
        Ok(())
    }

    /// `nvmf_get_subsystems` (one, or all when `nqn` is `None`).
    pub fn subsystems_json(&self, nqn: Option<&str>) -> Result<Value, NvmfError> {
        let st = self.lock();
        match nqn {
            Some(n) => {
                let s = Self::find(&st, n)?;
                Ok(json!([subsystem_json(&s)]))
            }
            None => Ok(Value::Array(st.subsystems.iter().map(|s| subsystem_json(s)).collect())),
        }
    }

    /// `nvmf_subsystem_get_controllers`.
    pub fn controllers_json(&self, nqn: &str) -> Result<Value, NvmfError> {
        let st = self.lock();
        let s = Self::find(&st, nqn)?;
        Ok(Value::Array(
            st.ctrlrs
                .iter()
                .filter(|c| Arc::ptr_eq(&c.subsys, &s) && !c.is_failed())
                .map(|c| {
                    json!({
                        "cntlid": c.cntlid, "hostnqn": c.hostnqn,
                        "hostid": uuid::Uuid::from_bytes(c.hostid).to_string(),
                        "num_io_qpairs": c.num_io_qpairs(),
                    })
                })
                .collect(),
        ))
    }

    /// `nvmf_subsystem_get_qpairs`.
    pub fn qpairs_json(&self, nqn: &str) -> Result<Value, NvmfError> {
        let st = self.lock();
        Self::find(&st, nqn)?;
        let mut out = Vec::new();
        for q in &st.qpairs {
            let c = q.connected.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some((cntlid, qid, n)) = c {
                if n == nqn {
                    out.push(json!({
                        "cntlid": cntlid, "qid": qid, "state": "active",
                        "thread": format!("nvmf_tgt_poll_group_{:03}", q.core.0),
                        "listen_address": q.listen.to_json(), "peer_address": q.peer,
                    }));
                }
            }
        }
        Ok(Value::Array(out))
    }

    /// `nvmf_subsystem_get_listeners`.
    pub fn listeners_json(&self, nqn: &str) -> Result<Value, NvmfError> {
        let st = self.lock();
        let s = Self::find(&st, nqn)?;
        let c = s.conf();
        Ok(Value::Array(
            c.listeners
                .iter()
                .map(|l| json!({"address": l.to_json(), "secure_channel": false, "ana_state": "optimized"}))
                .collect(),
        ))
    }

    /// `nvmf_get_transports`.
    pub fn transports_json(&self) -> Value {
        match self.lock().transport {
            Some(t) => json!([t.to_json()]),
            None => json!([]),
        }
    }

    // ---- called by qpairs ----------------------------------------------------------------

    pub(crate) fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        Self::find(&self.lock(), nqn).ok()
    }

    /// The discovery log's records for `hostnqn` (and its generation counter).
    pub(crate) fn discovery_view(&self, hostnqn: &str) -> (u64, Vec<(String, ListenAddress, bool)>) {
        let st = self.lock();
        let mut out = Vec::new();
        for s in &st.subsystems {
            if !s.discovery && !s.host_allowed(hostnqn) {
                continue;
            }
            for l in &s.conf().listeners {
                out.push((s.nqn.clone(), l.clone(), s.discovery));
            }
        }
        (st.genctr, out)
    }

    /// A new controller for an admin Connect: the next free controller id of the subsystem's
    /// range. `None` if every id is taken.
    pub(crate) fn create_ctrlr(&self, make: impl FnOnce(u16) -> Controller) -> Option<Arc<Controller>> {
        let mut st = self.lock();
        st.ctrlrs.retain(|c| !c.is_failed());
        let c0 = make(0);
        let (lo, hi) = {
            let o = c0.subsys.opts();
            (o.min_cntlid, o.max_cntlid)
        };
        let span = u32::from(hi - lo) + 1;
        let start = st.next_cntlid.clamp(lo, hi);
        let id = (0..span)
            .map(|i| lo + ((u32::from(start - lo) + i) % span) as u16)
            .find(|id| {
                !st.ctrlrs
                    .iter()
                    .any(|c| c.cntlid == *id && Arc::ptr_eq(&c.subsys, &c0.subsys))
            })?;
        st.next_cntlid = if id == hi { lo } else { id + 1 };
        let ctrl = Arc::new(c0.with_cntlid(id));
        st.ctrlrs.push(ctrl.clone());
        Some(ctrl)
    }

    /// The live controller `cntlid` of subsystem `nqn` for host `hostnqn` (I/O Connect).
    pub(crate) fn find_ctrlr(&self, nqn: &str, cntlid: u16, hostnqn: &str) -> Option<Arc<Controller>> {
        self.lock()
            .ctrlrs
            .iter()
            .find(|c| c.cntlid == cntlid && c.subsys.nqn == nqn && c.hostnqn == hostnqn && !c.is_failed())
            .cloned()
    }

    /// The admin qpair of `ctrl` closed: the association ends.
    pub(crate) fn ctrlr_gone(&self, ctrl: &Arc<Controller>) {
        ctrl.fail();
        self.lock().ctrlrs.retain(|c| !Arc::ptr_eq(c, ctrl));
    }

    /// A qpair closed: forgets it, and finishes fini when it was the last.
    pub(crate) fn qpair_closed(&self, q: &QpairShared) {
        let mut st = self.lock();
        st.qpairs.retain(|x| x.id != q.id);
        let fini = if st.qpairs.is_empty() { st.fini.take() } else { None };
        drop(st);
        tracing::debug!(qpair = q.id, peer = %q.peer, "nvmf: qpair closed");
        if let Some(f) = fini {
            let main = self.cores.main_core();
            if try_current().is_some_and(|r| r.core() == main) {
                f.done();
            } else if let Err(e) = self.cores.run_on(main, move || f.done()) {
                tracing::warn!(error = %e, "nvmf: cannot reach the main reactor to finish");
            }
        }
    }

    /// Hands an accepted connection to the next reactor (round robin). Main core.
    fn accepted(&self, listen: &ListenAddress, stream: TcpStream) {
        let Some(opts) = self.transport() else { return };
        if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
            return;
        }
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let mut st = self.lock();
        let core = match st.last_core {
            Some(c) => self.cores.next_core(c),
            None => self.cores.main_core(),
        };
        st.last_core = Some(core);
        let shared = Arc::new(QpairShared {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            core,
            peer,
            listen: listen.clone(),
            connected: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        st.qpairs.push(shared.clone());
        drop(st);
        let Some(me) = self.me.upgrade() else { return };
        let s2 = shared.clone();
        if let Err(e) = self
            .cores
            .run_on(core, move || crate::qpair::spawn(me, s2, stream, opts))
        {
            tracing::warn!(error = %e, "nvmf: cannot hand a connection to its reactor");
            self.qpair_closed(&shared);
        }
    }
}

/// How often a listener is polled for new connections (as the NBD server's: an idle accept
/// costs a few microseconds; a host waiting a millisecond longer does not notice).
const ACCEPT_PERIOD_US: u64 = 1000;

/// Registers the accept poller of `rec` on the calling (main) reactor; it unregisters once the
/// listener closed or the reactor stops.
fn accept_poller(target: Weak<NvmfTarget>, rec: Arc<Mutex<ListenerRec>>) {
    let slot: Rc<RefCell<Option<PollerHandle>>> = Rc::new(RefCell::new(None));
    let s2 = slot.clone();
    let handle = current().register_timed_poller("nvmf_listen".to_string(), ACCEPT_PERIOD_US, move || {
        let Some(target) = target.upgrade() else {
            drop(s2.borrow_mut().take());
            return PollStatus::Idle;
        };
        let r = rec.lock().unwrap_or_else(|e| e.into_inner());
        let mut sock = r.sock.lock().unwrap_or_else(|e| e.into_inner());
        if target.cores().is_stopping() {
            drop(sock.take());
        }
        let Some(l) = sock.as_ref() else {
            drop(sock);
            drop(r);
            drop(s2.borrow_mut().take());
            return PollStatus::Idle;
        };
        let mut got = Vec::new();
        for _ in 0..16 {
            match l.accept() {
                Ok((s, _)) => got.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "nvmf: accept failed");
                    break;
                }
            }
        }
        drop(sock);
        if got.is_empty() {
            return PollStatus::Idle;
        }
        let addr = r.addr.clone();
        drop(r);
        for s in got {
            target.accepted(&addr, s);
        }
        PollStatus::Busy
    });
    *slot.borrow_mut() = Some(handle);
}
