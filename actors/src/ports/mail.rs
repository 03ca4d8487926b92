//! Sending email, and the journal of emails the server accepted before their record
//! committed.

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::model::SentEmail;

/// An email to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    /// Recipient.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// `Message-ID` header, derived from the event id so that a duplicate can be dropped.
    pub message_id: String,
}

/// A send failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct MailError {
    /// How to treat it.
    pub class: crate::model::ErrorClass,
    /// The mail server could not be reached (connection refused or reset, timeout): counts
    /// towards the circuit breaker and holds the message instead of spending a delivery.
    pub connection: bool,
    /// What went wrong.
    pub message: String,
}

/// Called the moment the mail server accepted an email.
pub type OnAccepted = Box<dyn FnOnce() + Send>;

/// Sends email (SMTP, or files in the embedded mode).
pub trait Mailer: Send + Sync + 'static {
    /// Sends one email.
    fn send<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<(), MailError>>;

    /// Sends one email and calls `accepted` as soon as the server accepted it, before
    /// anything else waits its turn (a transport that reads the reply on a thread of its own
    /// calls it there).
    fn send_noting<'a>(
        &'a self,
        email: &'a Email,
        accepted: OnAccepted,
    ) -> BoxFuture<'a, Result<(), MailError>> {
        async move {
            let sent = self.send(email).await;
            if sent.is_ok() {
                accepted();
            }
            sent
        }
        .boxed()
    }
}

/// Notes each email the moment the mail server accepts it, before its record commits.
///
/// A daemon killed between the server's `250` and the commit of the `sent_emails` row would
/// send that email again when the message is redelivered. A note written at once (a local
/// file: a write survives the process) lets the daemon, when it starts again, record what
/// it sent before it takes any message, so the redelivery finds the email already sent.
pub trait SendJournal: Send + Sync + 'static {
    /// Notes `sent` (a note that cannot be written is logged: the record still follows).
    fn note(&self, sent: &SentEmail);
    /// Whether this event's email was noted and its record has not committed yet.
    fn noted(&self, event_id: &str) -> bool;
    /// The event's record committed: its note is no longer needed.
    fn recorded(&self, event_id: &str);
}
