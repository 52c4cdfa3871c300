//! The drain: from the moment the gateway begins to stop, the instant by
//! which every call must have ended.
//!
//! The shutdown grace bounds the process, not a call: a call without a
//! deadline could wait for a token, then a quota slot, then Feishu, up to
//! three times over, and outlast it. Calls read the drain's deadline, and
//! whatever they still wait for when it comes ends then, with a status the
//! caller can act on, instead of the process dying under them.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};

/// Shared by everything that must end by the drain; cheap to clone.
#[derive(Debug, Clone)]
pub struct Drain {
    deadline: Arc<watch::Sender<Option<Instant>>>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            deadline: Arc::new(watch::channel(None).0),
        }
    }
}

impl Drain {
    /// Starts the drain with `grace` left; the calls' deadline keeps a
    /// tenth of it (at most 1 s) back, for their answers to go out and the
    /// connections to close before the grace ends. Later calls keep the first deadline.
    pub fn begin(&self, grace: Duration) -> Instant {
        let margin = (grace / 10).min(Duration::from_secs(1));
        let deadline = Instant::now() + grace - margin;
        self.deadline.send_if_modified(|d| {
            let first = d.is_none();
            if first {
                *d = Some(deadline);
            }
            first
        });
        self.deadline().unwrap_or(deadline)
    }

    /// The calls' deadline, once the drain has begun.
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.borrow()
    }

    /// Whether `need` still fits before the drain's deadline (always, before the drain).
    pub fn leaves(&self, need: Duration) -> bool {
        self.deadline().is_none_or(|d| Instant::now() + need <= d)
    }

    /// Resolves when the drain begins, with its deadline.
    pub async fn began(&self) -> Instant {
        let mut rx = self.deadline.subscribe();
        loop {
            if let Some(d) = *rx.borrow_and_update() {
                return d;
            }
            if rx.changed().await.is_err() {
                // Unreachable while `self` holds the sender.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves at the drain's deadline.
    pub async fn passed(&self) {
        let deadline = self.began().await;
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_the_grace_less_a_margin_and_set_once() {
        let drain = Drain::default();
        assert_eq!(drain.deadline(), None);
        assert!(drain.leaves(Duration::from_secs(3600)));
        let waiting = tokio::spawn({
            let drain = drain.clone();
            async move { drain.began().await }
        });
        let start = Instant::now();
        let deadline = drain.begin(Duration::from_secs(2));
        assert_eq!(deadline, start + Duration::from_millis(1800));
        assert_eq!(waiting.await.unwrap(), deadline);
        assert_eq!(drain.begin(Duration::from_secs(60)), deadline);
        assert!(drain.leaves(Duration::from_millis(1800)));
        assert!(!drain.leaves(Duration::from_millis(1801)));
        drain.passed().await;
        assert_eq!(Instant::now(), deadline);
        let long = Drain::default().begin(Duration::from_secs(20));
        assert_eq!(long, Instant::now() + Duration::from_secs(19));
    }
}
