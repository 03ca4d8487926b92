//! The SMTP client: lettre's connection and commands, with primed's own pool.
//!
//! lettre's pooled transport costs about 42 ms per email on an idle network, whatever the
//! server: it writes the message and the terminating `\r\n.\r\n` in two writes on a socket
//! with Nagle's algorithm on, so the terminator waits for the acknowledgement of the body,
//! which the receiver delays (~40 ms) because it has nothing to answer until the terminator
//! comes; and it sends a `NOOP` and waits for its reply before every reuse of a pooled
//! connection. Here each connection:
//!
//! - sets `TCP_NODELAY`, and holds what lettre writes until it reads the reply ([`Corked`]):
//!   the message and its terminator, or a pipelined group of commands, leave in one write;
//! - pipelines `MAIL FROM`, `RCPT TO` and `DATA` (RFC 2920) when the server offers
//!   `PIPELINING`: two round trips per email instead of four;
//! - is reused without a `NOOP`. A pooled connection the server has closed is found by its
//!   first reply; the email is then sent once on a new connection. That retry happens only
//!   when the failure came before any of the message was written, so it can never send an
//!   email twice.
//!
//! Idle connections older than [`IDLE_LIMIT`] are closed instead of reused (servers end idle
//! sessions after a few minutes, RFC 5321 §4.5.3.2.7).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use lettre::Address;
use lettre::transport::smtp::Error as SmtpError;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Idle connections older than this are closed rather than reused.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// Writes held by [`Corked`] go out at once past this size.
const CORK_LIMIT: usize = 64 * 1024;

/// How the connection is encrypted.
#[derive(Clone)]
pub enum Security {
    /// Plain text.
    None,
    /// `STARTTLS` after the greeting; refused when the server does not offer it.
    StartTls(TlsParameters),
    /// TLS from the first byte (SMTPS).
    Tls(TlsParameters),
}

/// The server and how to talk to it.
#[derive(Clone)]
pub struct Server {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Encryption.
    pub security: Security,
    /// `AUTH` credentials.
    pub credentials: Option<Credentials>,
    /// Bounds each connect (with its greeting, `EHLO`, TLS and `AUTH`) and each email.
    pub timeout: Duration,
}

/// Why an email was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server answered with an error, or the connection broke.
    #[error("{0}")]
    Smtp(#[from] SmtpError),
    /// The server did not answer in time.
    #[error("no answer within {0:?} while {1}")]
    TimedOut(Duration, &'static str),
    /// The server cannot take this email (see the message).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The TCP connection could not be made.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
}

impl SendError {
    /// A 5xx answer: the email can never be sent as it is.
    pub fn is_permanent(&self) -> bool {
        match self {
            SendError::Smtp(e) => e.is_permanent(),
            SendError::Unsupported(_) => true,
            _ => false,
        }
    }

    /// A 4xx answer: the server is up and asks to try again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Smtp(e) if e.is_transient())
    }
}

/// A pooled connection.
struct Conn {
    smtp: AsyncSmtpConnection,
    pipelining: bool,
    eight_bit: bool,
    utf8: bool,
}

/// A pool of SMTP connections to one server.
pub struct SmtpPool {
    server: Server,
    hello: ClientId,
    idle: Mutex<Vec<(Conn, Instant)>>,
    slots: Semaphore,
}

/// Where a failed transaction stopped.
enum Stage {
    /// Nothing of the message was written: it can be sent again.
    BeforeContent,
    /// The message was written, maybe accepted: never send it again.
    Content,
}

impl SmtpPool {
    /// A pool of at most `size` connections (made on first use).
    pub fn new(server: Server, size: usize) -> Self {
        Self {
            server,
            hello: ClientId::default(),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(size.max(1)),
        }
    }

    /// Sends one email (`message` is the formatted message, as lettre builds it).
    pub async fn send(
        &self,
        from: Option<&Address>,
        to: &[Address],
        message: &[u8],
    ) -> Result<(), SendError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| SendError::Unsupported("the SMTP pool is closed"))?;
        let (mut conn, reused) = match self.take_idle() {
            Some(conn) => (conn, true),
            None => (self.connect().await?, false),
        };
        match self.transact(&mut conn, from, to, message).await {
            Ok(()) => {
                self.put_back(conn);
                Ok(())
            }
            Err((Stage::BeforeContent, err)) if reused && stale(&err) => {
                // The server closed the idle connection: nothing was sent on it.
                drop(conn);
                let mut conn = self.connect().await?;
                let sent = self.transact(&mut conn, from, to, message).await;
                if sent.is_ok() {
                    self.put_back(conn);
                }
                sent.map_err(|(_, e)| e)
            }
            Err((_, err)) => Err(err),
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // Most recently used first; the old ones are closed.
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_LIMIT {
                return Some(conn);
            }
        }
        None
    }

    fn put_back(&self, conn: Conn) {
        if conn.smtp.has_broken() {
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((conn, Instant::now()));
    }

    /// Connects, reads the greeting, says `EHLO`, encrypts and authenticates as configured.
    async fn connect(&self) -> Result<Conn, SendError> {
        let timeout = self.server.timeout;
        tokio::time::timeout(timeout, self.connect_inner())
            .await
            .map_err(|_| SendError::TimedOut(timeout, "connecting"))?
    }

    async fn connect_inner(&self) -> Result<Conn, SendError> {
        let s = &self.server;
        let corked = Corked::connect(&s.host, s.port)
            .await
            .map_err(SendError::Connect)?;
        let mut smtp = match &s.security {
            Security::Tls(params) => {
                // lettre makes its TLS streams only from its own network stream type.
                #[allow(deprecated)]
                let mut stream =
                    lettre::transport::smtp::client::AsyncNetworkStream::use_existing_tokio1(
                        Box::new(corked),
                    );
                stream.upgrade_tls(params.clone()).await?;
                AsyncSmtpConnection::connect_with_transport(
                    Box::new(TlsStream(stream)),
                    &self.hello,
                )
                .await?
            }
            Security::None | Security::StartTls(_) => {
                AsyncSmtpConnection::connect_with_transport(Box::new(corked), &self.hello).await?
            }
        };
        if let Security::StartTls(params) = &s.security {
            if !smtp.can_starttls() {
                smtp.abort().await;
                return Err(SendError::Unsupported(
                    "the SMTP server does not offer STARTTLS (set SMTP_TLS=none or tls)",
                ));
            }
            smtp.starttls(params.clone(), &self.hello).await?;
        }
        if let Some(credentials) = &s.credentials {
            smtp.auth(DEFAULT_MECHANISMS, credentials).await?;
        }
        // lettre keeps only the extensions it uses; PIPELINING is read from a second EHLO.
        let ehlo = smtp.command(Ehlo::new(self.hello.clone())).await?;
        let offers = |name: &str| {
            ehlo.message().any(|line| {
                line.split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(name))
            })
        };
        Ok(Conn {
            pipelining: offers("PIPELINING"),
            eight_bit: smtp.server_info().supports_feature(Extension::EightBitMime),
            utf8: smtp.server_info().supports_feature(Extension::SmtpUtfEight),
            smtp,
        })
    }

    /// One mail transaction on `conn`, bounded by the timeout.
    async fn transact(
        &self,
        conn: &mut Conn,
        from: Option<&Address>,
        to: &[Address],
        message: &[u8],
    ) -> Result<(), (Stage, SendError)> {
        let timeout = self.server.timeout;
        let mut stage = Stage::BeforeContent;
        match tokio::time::timeout(timeout, transact(conn, from, to, message, &mut stage)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err((stage, e)),
            Err(_) => Err((stage, SendError::TimedOut(timeout, "sending an email"))),
        }
    }
}

/// A reused connection's first reply failed as a connection the server closed does.
fn stale(err: &SendError) -> bool {
    match err {
        SendError::Smtp(e) => {
            // 421: the service is closing the channel (an idle timeout, a restart).
            !e.is_permanent()
                && (!e.is_transient() || e.status().is_some_and(|c| c.to_string() == "421"))
        }
        SendError::TimedOut(..) | SendError::Connect(_) | SendError::Unsupported(_) => false,
    }
}

/// A group of commands written at once (RFC 2920 pipelining).
struct Group(String);

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

async fn transact(
    conn: &mut Conn,
    from: Option<&Address>,
    to: &[Address],
    message: &[u8],
    stage: &mut Stage,
) -> Result<(), SendError> {
    let mut params = Vec::new();
    if from
        .into_iter()
        .chain(to)
        .any(|a: &Address| !AsRef::<str>::as_ref(a).is_ascii())
    {
        if !conn.utf8 {
            return Err(SendError::Unsupported(
                "the SMTP server does not accept non-ASCII addresses (no SMTPUTF8)",
            ));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if !message.is_ascii() {
        if !conn.eight_bit {
            return Err(SendError::Unsupported(
                "the SMTP server does not accept 8-bit messages (no 8BITMIME)",
            ));
        }
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let mail = Mail::new(from.cloned(), params);
    let rcpts = to.iter().map(|a| Rcpt::new(a.clone(), vec![]));
    let smtp = &mut conn.smtp;
    if conn.pipelining {
        let mut group = mail.to_string();
        for rcpt in rcpts {
            group.push_str(&rcpt.to_string());
        }
        group.push_str(&Data.to_string());
        // Every reply is read, so that the first error is the one reported.
        let mut first_error = smtp.command(Group(group)).await.err();
        for _ in 0..=to.len() {
            if let Err(e) = smtp.read_response().await
                && first_error.is_none()
            {
                first_error = Some(e);
            }
            if smtp.has_broken() {
                break;
            }
        }
        if let Some(e) = first_error {
            // The connection is dropped, never reused: no QUIT (after a 354 the server would
            // read it as the message).
            return Err(e.into());
        }
    } else {
        for command in std::iter::once(mail.to_string())
            .chain(rcpts.map(|r| r.to_string()))
            .chain([Data.to_string()])
        {
            smtp.command(Group(command)).await?;
        }
    }
    *stage = Stage::Content;
    smtp.message(message).await?;
    Ok(())
}

/// A TCP stream whose writes wait in a buffer until the next read (or until the buffer
/// fills, or the stream is shut down); a flush does not send them.
///
/// SMTP is a conversation: every write of lettre's is followed by reading the server's
/// reply, and lettre flushes after each write. Holding the writes until that read sends
/// everything said before the reply is awaited in one segment: the message and its
/// terminator, a pipelined group of commands, a TLS record and the next.
#[derive(Debug)]
pub struct Corked {
    tcp: TcpStream,
    out: Vec<u8>,
    peer: SocketAddr,
}

impl Corked {
    /// Connects, with `TCP_NODELAY` (the writes are held here instead).
    pub async fn connect(host: &str, port: u16) -> std::io::Result<Self> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        Self::new(tcp)
    }

    /// Wraps a connected stream.
    pub fn new(tcp: TcpStream) -> std::io::Result<Self> {
        let peer = tcp.peer_addr()?;
        Ok(Self {
            tcp,
            out: Vec::new(),
            peer,
        })
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Corked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Corked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.out.len() + buf.len() > CORK_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        self.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Sent by the next read (see the type's doc).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Corked {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

/// lettre's TLS stream (futures-io) as the tokio stream its connection takes.
#[allow(deprecated)]
struct TlsStream(lettre::transport::smtp::client::AsyncNetworkStream);

#[allow(deprecated)]
impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        let n = ready!(futures::io::AsyncRead::poll_read(
            Pin::new(&mut self.0),
            cx,
            unfilled
        ))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

impl AsyncTokioStream for TlsStream {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    //! Against a recording SMTP server on loopback that notes every read it makes, so the
    //! tests see how the client's bytes arrive: what was written together, and what was
    //! said at all.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[derive(Clone, Copy, PartialEq)]
    enum After {
        /// Answer 250 and keep the connection.
        Keep,
        /// Answer 250, then close the connection (an idle timeout the client has not seen).
        Close,
        /// Close without answering the terminator.
        Vanish,
    }

    #[derive(Default)]
    struct Record {
        connections: usize,
        /// What each read returned, per connection, after the EHLO.
        reads: Vec<String>,
        /// Whole messages received.
        messages: Vec<String>,
    }

    async fn recorder(pipelining: bool, after: After) -> (u16, Arc<Mutex<Record>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let record = Arc::new(Mutex::new(Record::default()));
        let rec = record.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                rec.lock().unwrap().connections += 1;
                let rec = rec.clone();
                tokio::spawn(async move {
                    socket.write_all(b"220 recorder ESMTP\r\n").await.unwrap();
                    let mut data: Option<String> = None;
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        let mut replies = String::new();
                        let mut close = false;
                        let mut rest = text.as_str();
                        while !rest.is_empty() {
                            if let Some(body) = data.as_mut() {
                                match rest.find("\r\n.\r\n") {
                                    Some(end) => {
                                        body.push_str(&rest[..end]);
                                        rest = &rest[end + 5..];
                                        rec.lock().unwrap().messages.push(data.take().unwrap());
                                        match after {
                                            After::Keep => replies.push_str("250 queued\r\n"),
                                            After::Close => {
                                                replies.push_str("250 queued\r\n");
                                                close = true;
                                            }
                                            After::Vanish => return,
                                        }
                                    }
                                    None => {
                                        body.push_str(rest);
                                        rest = "";
                                    }
                                }
                                continue;
                            }
                            let (line, tail) = rest.split_once("\r\n").unwrap_or((rest, ""));
                            rest = tail;
                            let upper = line.to_ascii_uppercase();
                            if upper.starts_with("EHLO") {
                                replies.push_str(if pipelining {
                                    "250-recorder\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                                } else {
                                    "250-recorder\r\n250 8BITMIME\r\n"
                                });
                                continue;
                            }
                            if upper.starts_with("DATA") {
                                data = Some(String::new());
                                replies.push_str("354 go ahead\r\n");
                            } else if upper.starts_with("QUIT") {
                                replies.push_str("221 bye\r\n");
                                close = true;
                            } else {
                                replies.push_str("250 ok\r\n");
                            }
                        }
                        if !text.to_ascii_uppercase().starts_with("EHLO") {
                            rec.lock().unwrap().reads.push(text);
                        }
                        if socket.write_all(replies.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (port, record)
    }

    fn pool(port: u16) -> SmtpPool {
        SmtpPool::new(
            Server {
                host: "127.0.0.1".into(),
                port,
                security: Security::None,
                credentials: None,
                timeout: Duration::from_secs(5),
            },
            4,
        )
    }

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    async fn send(pool: &SmtpPool, i: usize) -> Result<(), SendError> {
        let body = format!("Subject: test {i}\r\n\r\nline one\r\n.starts with a dot\r\n");
        pool.send(
            Some(&addr("primed@example.com")),
            &[addr(&format!("to{i}@example.com"))],
            body.as_bytes(),
        )
        .await
    }

    #[tokio::test]
    async fn corked_writes_wait_for_the_next_read_and_leave_together() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut corked = Corked::connect("127.0.0.1", port).await.unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        assert!(corked.tcp.nodelay().unwrap(), "Nagle's algorithm is off");
        // What lettre does for a message: write, flush, write the terminator, flush.
        corked.write_all(b"Subject: x\r\n\r\nbody").await.unwrap();
        corked.flush().await.unwrap();
        corked.write_all(b"\r\n.\r\n").await.unwrap();
        corked.flush().await.unwrap();
        let mut buf = [0u8; 256];
        assert_eq!(
            peer.try_read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "nothing is sent by a flush"
        );
        // Reading the reply sends both at once.
        let reader = tokio::spawn(async move {
            let mut reply = [0u8; 16];
            let n = corked.read(&mut reply).await.unwrap();
            (corked, reply[..n].to_vec())
        });
        let n = peer.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"Subject: x\r\n\r\nbody\r\n.\r\n");
        peer.write_all(b"250 ok\r\n").await.unwrap();
        let (mut corked, reply) = reader.await.unwrap();
        assert_eq!(reply, b"250 ok\r\n");
        // A shutdown sends what is held.
        corked.write_all(b"QUIT\r\n").await.unwrap();
        corked.shutdown().await.unwrap();
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn with_pipelining_an_email_is_two_writes_on_one_connection_and_no_noop() {
        let (port, record) = recorder(true, After::Keep).await;
        let pool = pool(port);
        for i in 0..5 {
            send(&pool, i).await.unwrap();
        }
        let r = record.lock().unwrap();
        assert_eq!(r.connections, 1, "the connection is reused");
        assert_eq!(r.messages.len(), 5);
        assert!(
            !r.reads
                .iter()
                .any(|read| read.to_ascii_uppercase().contains("NOOP")),
            "no NOOP before a reuse: {:?}",
            r.reads
        );
        // Per email: MAIL + RCPT + DATA together, then the message with its terminator.
        assert_eq!(r.reads.len(), 10, "{:#?}", r.reads);
        for (i, pair) in r.reads.chunks(2).enumerate() {
            assert_eq!(
                pair[0],
                format!(
                    "MAIL FROM:<primed@example.com>\r\nRCPT TO:<to{i}@example.com>\r\nDATA\r\n"
                )
            );
            assert!(
                pair[1].starts_with(&format!("Subject: test {i}")),
                "{}",
                pair[1]
            );
            assert!(
                pair[1].ends_with("\r\n.\r\n"),
                "terminator in the same write: {:?}",
                pair[1]
            );
        }
        // Dot-stuffing is lettre's, and still done.
        assert!(r.messages[0].contains("\r\n..starts with a dot"));
    }

    #[tokio::test]
    async fn without_pipelining_commands_wait_for_their_replies_and_the_message_is_one_write() {
        let (port, record) = recorder(false, After::Keep).await;
        let pool = pool(port);
        for i in 0..3 {
            send(&pool, i).await.unwrap();
        }
        let r = record.lock().unwrap();
        assert_eq!(r.connections, 1);
        assert_eq!(r.reads.len(), 12, "{:#?}", r.reads);
        for (i, four) in r.reads.chunks(4).enumerate() {
            assert_eq!(four[0], "MAIL FROM:<primed@example.com>\r\n");
            assert_eq!(four[1], format!("RCPT TO:<to{i}@example.com>\r\n"));
            assert_eq!(four[2], "DATA\r\n");
            assert!(four[3].ends_with("\r\n.\r\n"));
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced_and_the_email_sent_once() {
        let (port, record) = recorder(true, After::Close).await;
        let pool = pool(port);
        for i in 0..3 {
            send(&pool, i).await.unwrap();
        }
        let r = record.lock().unwrap();
        assert_eq!(r.messages.len(), 3, "each email once");
        assert_eq!(r.connections, 3, "a new connection after each close");
    }

    #[tokio::test]
    async fn a_connection_lost_after_the_message_was_written_is_never_retried() {
        let (port, record) = recorder(true, After::Vanish).await;
        let pool = pool(port);
        let err = send(&pool, 0).await.unwrap_err();
        assert!(
            !err.is_permanent() && !err.is_transient(),
            "a connection failure: {err}"
        );
        let r = record.lock().unwrap();
        assert_eq!(r.messages.len(), 1, "sent once, not again");
        assert_eq!(r.connections, 1);
    }
}
