//! The chaos harness's fault-injecting TCP proxy, in front of a real redis-server of the
//! test's own: pass-through, latency, blackhole, refused connections, reset connections, canned answers, limited bandwidth.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chaos::proxy::{Fault, FaultProxy};
use chaos::services::Redis;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One `PING` on `conn`, waiting at most `wait` for the `+PONG`.
async fn ping(conn: &mut BufReader<TcpStream>, wait: Duration) -> Result<(), String> {
    conn.get_mut()
        .write_all(b"PING\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    match tokio::time::timeout(wait, conn.read_line(&mut line)).await {
        Err(_) => Err("no answer".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(_)) if line == "+PONG\r\n" => Ok(()),
        Ok(Ok(_)) => Err(format!("answered {line:?}")),
    }
}

async fn connect(proxy: &FaultProxy) -> std::io::Result<BufReader<TcpStream>> {
    TcpStream::connect(proxy.addr()).await.map(BufReader::new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_passes_delays_swallows_refuses_and_resets() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path()).await.unwrap();
    let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port).into())
        .await
        .unwrap();
    let second = Duration::from_secs(1);

    let mut conn = connect(&proxy).await.unwrap();
    ping(&mut conn, second).await.unwrap();

    // Latency: the answer comes, the request and the reply each held for the delay (what the
    // proxy did, not a stopwatch on the traffic).
    proxy.set(Fault::Latency(Duration::from_millis(150)));
    let before = proxy.held();
    ping(&mut conn, 5 * second).await.unwrap();
    let held = proxy.held();
    assert_eq!(held.chunks - before.chunks, 2, "both ways: {held:?}");
    assert_eq!(held.total - before.total, Duration::from_millis(300));

    // Blackhole: the connection stays open and nothing comes back.
    proxy.set(Fault::Blackhole);
    assert_eq!(
        ping(&mut conn, Duration::from_millis(300)).await,
        Err("no answer".to_string())
    );
    // That connection's stream is now out of step; a new one works once traffic passes.
    proxy.set(Fault::None);
    let mut fresh = connect(&proxy).await.unwrap();
    ping(&mut fresh, second).await.unwrap();

    // Reset: every open connection ends.
    proxy.reset_all();
    assert!(
        ping(&mut fresh, second).await.is_err(),
        "a reset connection is dead"
    );
    let mut after = connect(&proxy).await.unwrap();
    ping(&mut after, second).await.unwrap();

    // Refuse: new connections are closed at once; open ones keep working.
    proxy.set(Fault::Refuse);
    // The reset may reach the client while it connects, or at its first request.
    match connect(&proxy).await {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(mut refused) => assert!(ping(&mut refused, second).await.is_err()),
    }
    ping(&mut after, second).await.unwrap();
    proxy.set(Fault::None);
    let mut back = connect(&proxy).await.unwrap();
    ping(&mut back, second).await.unwrap();
    assert_eq!(proxy.fault(), Fault::None);

    // Answer: a new connection gets the canned reply, then its end; open ones carry on.
    proxy.set(Fault::Answer("421 4.3.2 try again later\r\n"));
    let mut answered = connect(&proxy).await.unwrap();
    let mut greeting = String::new();
    answered.read_line(&mut greeting).await.unwrap();
    assert_eq!(greeting, "421 4.3.2 try again later\r\n");
    assert_eq!(
        answered.read_line(&mut greeting).await.unwrap(),
        0,
        "then closed"
    );
    ping(&mut back, second).await.unwrap();

    // Bandwidth: 2,000 bytes at 4,000 bytes/s are held half a second each way in all.
    proxy.set(Fault::Bandwidth(4_000));
    let value = "x".repeat(2_000);
    let before = proxy.held();
    back.get_mut()
        .write_all(format!("ECHO {value}\r\n").as_bytes())
        .await
        .unwrap();
    let mut echoed = String::new();
    while !echoed.contains(&value) {
        let n = tokio::time::timeout(5 * second, back.read_line(&mut echoed))
            .await
            .expect("the echo arrives")
            .unwrap();
        assert!(n > 0, "closed after {echoed:?}");
    }
    assert!(echoed.contains(&value), "{echoed:?}");
    let held = proxy.held().total - before.total;
    // The request (2,007 bytes) and its echo each take ~0.5 s at 4,000 bytes/s.
    assert!(
        held >= Duration::from_millis(1_000),
        "held {held:?} for 4,000+ bytes at 4,000 bytes/s"
    );
    proxy.set(Fault::None);
}

/// A reset ends the client's connection, but the server behind the proxy is only told the
/// end and read until it closes: a server that answers commands it had already buffered
/// (maildev's SMTP server does, and dies of an EPIPE) can still write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reset_the_server_can_still_write_its_replies() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut server, _) = listener.accept().await.unwrap();
    client.write_all(b"DATA\r\n").await.unwrap();
    let mut command = [0u8; 6];
    server.read_exact(&mut command).await.unwrap();

    proxy.reset_all();
    // The client's connection ends; the server sees the end of its input.
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).await.unwrap_or(0), 0);
    assert_eq!(server.read(&mut command).await.unwrap(), 0);
    // Its replies, far more than any socket buffer holds, all go out (read and dropped by
    // the proxy); into a closed socket the writes would fail (reset, broken pipe).
    let reply = vec![b'x'; 1 << 20];
    for i in 0..8 {
        server
            .write_all(&reply)
            .await
            .unwrap_or_else(|e| panic!("write {i} after the reset: {e}"));
    }
    server.shutdown().await.unwrap();
}
