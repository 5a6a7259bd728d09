//! The OpenBao lab: a real `bao server` (OpenBao 2.7.2) on loopback with a TLS listener
//! that requires client certificates, shaped like the seed's production. One
//! implementation backs both the integration tests ([`shared`]) and the README's
//! main-job command (the `rotate-lab` binary).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let lab = rotate_tests::Lab::start(std::path::Path::new("target/lab")).await?;
//! println!("export VAULT_ADDR={}", lab.addr);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod cluster;
mod lab;
mod lb;
mod pki;
mod units;

pub use cluster::{Cluster, Node};
pub use lab::{
    KV_MOUNT, Lab, LabPaths, PKI_MOUNT, SERVER_NAME, bao_binary, spawn_tied, spawn_tied_with,
};
pub use lb::Balancer;
pub use pki::{INTERMEDIATE_CN, LabCa, Leaf, ROOT_CN, write_file};
pub use units::{UnitDef, Units};

use std::sync::OnceLock;

/// The lab shared by every test of one test binary: started on first use in a thread that
/// lives as long as the process (the server is tied to it and dies with the binary).
pub fn shared() -> &'static Lab {
    static LAB: OnceLock<&'static Lab> = OnceLock::new();
    LAB.get_or_init(|| start_for_process(""))
}

/// A second lab for the tests of steps 1 and 2, which replace the admin identity and
/// the listener certificate of their server: the shared lab's must stay put while the
/// other tests run. Its tests take [`tls_lab_turn`] so they do not overlap either.
pub fn tls_lab() -> &'static Lab {
    static LAB: OnceLock<&'static Lab> = OnceLock::new();
    LAB.get_or_init(|| start_for_process("-tls"))
}

/// One test at a time on [`tls_lab`].
pub async fn tls_lab_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// The 3-node raft cluster shared by the cluster tests of one test binary (started on
/// first use, like [`shared`]). Its tests take [`cluster_turn`].
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<&'static Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/lab-tests")
            .join(format!("{}-cluster", std::process::id()));
        in_lab_thread("openbao-cluster", move || async move {
            Cluster::start(&dir, 3).await
        })
    })
}

/// The load balancer in front of [`cluster`] (started on first use).
pub fn balancer() -> &'static Balancer {
    static LB: OnceLock<&'static Balancer> = OnceLock::new();
    LB.get_or_init(|| {
        let c = cluster();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("cluster-balancer".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("balancer runtime");
                // The runtime keeps running the balancer's tasks for the process's life.
                rt.block_on(async move {
                    match Balancer::start(c).await {
                        Ok(b) => {
                            let _ = tx.send(Ok(&*Box::leak(Box::new(b))));
                            std::future::pending::<()>().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(format!("{e:#}")));
                        }
                    }
                });
            })
            .expect("spawn balancer thread");
        match rx.recv() {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => panic!("balancer failed to start: {e}"),
            Err(_) => panic!("balancer thread died"),
        }
    })
}

/// One test at a time on [`cluster`].
pub async fn cluster_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Run `start` on a thread that lives as long as the process (servers are tied to the
/// thread that spawned them), and leak what it started.
fn in_lab_thread<T, F, Fut>(name: &str, start: F) -> &'static T
where
    T: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from);
            match rt.and_then(|rt| rt.block_on(start())) {
                Ok(t) => {
                    let _ = tx.send(Ok(&*Box::leak(Box::new(t))));
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
            }
        })
        .expect("spawn lab thread");
    match rx.recv() {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => panic!("{name} failed to start: {e}"),
        Err(_) => panic!("{name} thread died"),
    }
}

fn start_for_process(tag: &str) -> &'static Lab {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/lab-tests")
        .join(format!("{}{tag}", std::process::id()));
    std::thread::Builder::new()
        .name(format!("openbao-lab{tag}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from);
            let lab = rt.and_then(|rt| rt.block_on(Lab::start(&dir)));
            match lab {
                Ok(lab) => {
                    let _ = tx.send(Ok(&*Box::leak(Box::new(lab))));
                    // Keep this thread (the server's parent) alive until the process exits.
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
            }
        })
        .expect("spawn lab thread");
    match rx.recv() {
        Ok(Ok(lab)) => lab,
        Ok(Err(e)) => panic!("OpenBao lab failed to start: {e}"),
        Err(_) => panic!("OpenBao lab thread died"),
    }
}
