//! A TCP load balancer in front of the cluster, as production has one: every new
//! connection goes to the active node when one is known (each node's `sys/health` is
//! polled every 200 ms), else to the first node that accepts. TLS passes through: every
//! node's certificate carries the SNI name.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use vault_client::SysApi;

use crate::cluster::Cluster;

/// A running balancer (lives as long as the process).
pub struct Balancer {
    /// `https://127.0.0.1:<port>`: the cluster address agents and the admin use.
    pub addr: String,
}

impl Balancer {
    /// Start balancing over `cluster`'s nodes, on this (long-lived) runtime.
    pub async fn start(cluster: &'static Cluster) -> Result<Balancer> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
        let active = Arc::new(AtomicUsize::new(usize::MAX));
        let poll = Arc::clone(&active);
        tokio::spawn(async move {
            loop {
                let mut found = usize::MAX;
                for i in 0..cluster.nodes.len() {
                    if let Ok(c) = cluster.client(i, false)
                        && let Ok(Ok(h)) =
                            tokio::time::timeout(Duration::from_millis(500), c.health()).await
                        && h.status == 200
                    {
                        found = i;
                        break;
                    }
                }
                poll.store(found, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let first = active.load(Ordering::SeqCst);
                let mut order: Vec<usize> = (0..ports.len()).collect();
                if first < ports.len() {
                    order.retain(|i| *i != first);
                    order.insert(0, first);
                }
                let ports = ports.clone();
                tokio::spawn(async move {
                    for i in order {
                        let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, ports[i]));
                        if let Ok(Ok(mut outbound)) =
                            tokio::time::timeout(Duration::from_millis(300), connect).await
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Ok(Balancer { addr })
    }
}
