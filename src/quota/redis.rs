//! Shared quota through Redis (placeholder, being built).
