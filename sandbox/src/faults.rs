//! Injected misbehaviour: what Feishu does on a bad day, on demand and in order.

use std::time::Duration;

use super::config::Endpoint;

/// Which requests a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTarget {
    Endpoint(Endpoint),
    /// Any business endpoint: the four seeds and every generated one.
    AnyBusiness,
    /// Any `/open-apis/auth/v3/…` endpoint.
    AnyToken,
}

impl FaultTarget {
    fn matches(self, endpoint: Endpoint) -> bool {
        match self {
            FaultTarget::Endpoint(e) => e == endpoint,
            FaultTarget::AnyBusiness => endpoint.is_business(),
            FaultTarget::AnyToken => !endpoint.is_business(),
        }
    }
}

/// How the sandbox misbehaves for a matching request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A proper Feishu error body (with log id and troubleshooter), nothing applied.
    FeishuError {
        http_status: u16,
        code: i64,
        msg: String,
    },
    /// These bytes exactly (HTML error pages, truncated JSON…), nothing applied.
    Raw {
        http_status: u16,
        content_type: String,
        body: Vec<u8>,
    },
    /// Wait, then answer normally (the business effect happens after the wait).
    Delay(Duration),
    /// Close the connection without a response byte; nothing applied.
    DropConnection,
    /// Apply the business effect, then close without a response: a write whose answer was lost.
    DropAfterApply,
    /// 429 + 99991400 with these rate-limit headers; nothing applied, nothing counted.
    RateLimited { reset_secs: u64, limit: u32 },
}

/// A fault and how many matching requests it still applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub target: FaultTarget,
    pub kind: FaultKind,
    pub times: usize,
}

impl Fault {
    /// A fault for the next matching request only.
    pub fn once(target: FaultTarget, kind: FaultKind) -> Fault {
        Fault {
            target,
            kind,
            times: 1,
        }
    }
}

/// Faults in injection order; the first one matching a request is consumed by it.
#[derive(Default)]
pub(crate) struct FaultQueue {
    faults: Vec<Fault>,
}

impl FaultQueue {
    pub fn push(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.faults.push(fault);
        }
    }

    /// The fault this request meets, if any (decrementing it).
    pub fn take(&mut self, endpoint: Endpoint) -> Option<FaultKind> {
        let i = self
            .faults
            .iter()
            .position(|f| f.target.matches(endpoint))?;
        let fault = &mut self.faults[i];
        fault.times -= 1;
        let kind = fault.kind.clone();
        if fault.times == 0 {
            self.faults.remove(i);
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_fault_is_consumed_in_order() {
        let mut q = FaultQueue::default();
        q.push(Fault {
            target: FaultTarget::AnyToken,
            kind: FaultKind::DropConnection,
            times: 1,
        });
        q.push(Fault {
            target: FaultTarget::AnyBusiness,
            kind: FaultKind::Delay(Duration::from_millis(1)),
            times: 2,
        });
        q.push(Fault::once(
            FaultTarget::Endpoint(Endpoint::CancelOnboard),
            FaultKind::DropAfterApply,
        ));
        let cancel = Endpoint::CancelOnboard;
        assert_eq!(
            q.take(cancel),
            Some(FaultKind::Delay(Duration::from_millis(1)))
        );
        assert_eq!(
            q.take(cancel),
            Some(FaultKind::Delay(Duration::from_millis(1)))
        );
        assert_eq!(q.take(cancel), Some(FaultKind::DropAfterApply));
        assert_eq!(q.take(cancel), None);
        assert_eq!(
            q.take(Endpoint::TenantToken),
            Some(FaultKind::DropConnection)
        );
        assert_eq!(q.take(Endpoint::TenantToken), None);
    }
}
