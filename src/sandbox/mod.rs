//! A stateful simulator of the Feishu endpoints the gateway calls (placeholder, being built).
