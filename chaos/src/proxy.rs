//! A fault-injecting TCP proxy for the chaos harness: it sits between a daemon and one of
//! its services (MariaDB, NATS, Redis, SMTP) and can add latency, swallow traffic
//! (blackhole: to the client, a half-open connection whose peer never answers), limit the
//! bandwidth, refuse new connections or answer them with a canned reply, or reset every
//! open connection, on demand.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Pass everything through.
    #[default]
    None,
    /// Hold every chunk this long before passing it on (both directions).
    Latency(Duration),
    /// Accept and read, but pass nothing on: connections hang.
    Blackhole,
    /// Close new connections at once (the service looks down); open ones carry on.
    Refuse,
    /// Pass at most this many bytes per second in each direction (a slow link).
    Bandwidth(u32),
    /// Answer new connections with this text and close them; open ones carry on. For an
    /// SMTP server that is up but refuses service: `"421 4.3.2 try again later\r\n"`.
    Answer(&'static str),
}

/// The proxy's switches, shared with its connections.
#[derive(Debug)]
struct Control {
    fault: Mutex<Fault>,
    /// Bumped by [`FaultProxy::reset_all`]; connections end when it changes.
    resets: watch::Sender<u64>,
    /// Chunks held back by [`Fault::Latency`] or [`Fault::Bandwidth`], and for how long in
    /// all (µs): what the proxy did, for tests to check instead of timing the traffic.
    held_chunks: AtomicU64,
    held_us: AtomicU64,
}

/// What the proxy has held back so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// Chunks held.
    pub chunks: u64,
    /// Their holds, added up.
    pub total: Duration,
}

/// A running proxy; dropped, it stops accepting (open connections end with their peers).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    control: Arc<Control>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (resets, _) = watch::channel(0);
        let control = Arc::new(Control {
            fault: Mutex::new(Fault::None),
            resets,
            held_chunks: AtomicU64::new(0),
            held_us: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, control.clone()));
        Ok(Self {
            addr,
            control,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `fault` from now on (to open connections too, except [`Fault::Refuse`]).
    pub fn set(&self, fault: Fault) {
        if let Ok(mut f) = self.control.fault.lock() {
            *f = fault;
        }
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.control.fault.lock().map_or(Fault::None, |f| *f)
    }

    /// What latency and bandwidth faults have held back so far.
    pub fn held(&self) -> Held {
        Held {
            chunks: self.control.held_chunks.load(Ordering::Relaxed),
            total: Duration::from_micros(self.control.held_us.load(Ordering::Relaxed)),
        }
    }

    /// Resets every open connection (the peers see a reset or an end of stream).
    pub fn reset_all(&self) {
        self.control.resets.send_modify(|n| *n += 1);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        match control.fault.lock().map_or(Fault::None, |f| *f) {
            Fault::Refuse => {
                // Linger 0: the client sees a reset, as from a port nobody listens on.
                let _ = client.set_zero_linger();
                drop(client);
                continue;
            }
            Fault::Answer(text) => {
                tokio::spawn(async move {
                    let mut client = client;
                    let _ = client.write_all(text.as_bytes()).await;
                    let _ = client.shutdown().await;
                });
                continue;
            }
            _ => {}
        }
        let control = control.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                let _ = client.set_zero_linger();
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let mut resets = control.resets.subscribe();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            {
                let up = pump(&mut cr, &mut sw, &control);
                let down = pump(&mut sr, &mut cw, &control);
                tokio::select! {
                    _ = async { tokio::join!(up, down) } => {}
                    _ = resets.changed() => {}
                }
            }
            // The client's connection ends here (on a reset, whatever was in flight).
            drop((cr, cw));
            // The server is told the end and read until it closes: a server that still
            // writes (a reply to commands it had buffered) must not write into a closed
            // socket — maildev's SMTP server dies of that EPIPE, which is not the fault
            // under test.
            let _ = sw.shutdown().await;
            let _ = tokio::time::timeout(UPSTREAM_DRAIN, drain(&mut sr)).await;
        });
    }
}

/// Longest the proxy reads what a server still sends after its client's connection ended.
const UPSTREAM_DRAIN: Duration = Duration::from_secs(5);

/// Reads and drops until the end of the stream.
async fn drain(from: &mut OwnedReadHalf) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Copies `from` to `to`, applying the fault in force to each chunk.
async fn pump(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, control: &Control) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let fault = control.fault.lock().map_or(Fault::None, |f| *f);
        let hold = match fault {
            Fault::Blackhole => continue,
            Fault::Latency(d) => Some(d),
            Fault::Bandwidth(bytes_per_second) => Some(Duration::from_secs_f64(
                n as f64 / f64::from(bytes_per_second.max(1)),
            )),
            Fault::None | Fault::Refuse | Fault::Answer(_) => None,
        };
        if let Some(hold) = hold {
            control.held_chunks.fetch_add(1, Ordering::Relaxed);
            control.held_us.fetch_add(
                u64::try_from(hold.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            tokio::time::sleep(hold).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
