//! Authentication: a token becomes a user and a device.

use std::sync::Arc;

use crate::service::{Handles, Operation};
use crate::{DeviceId, Timestamp, UserId};

/// Checks a token.
///
/// # Errors
/// `Unauthorized` for a missing, malformed, badly signed or expired token.
#[derive(Clone)]
pub struct Authenticate {
    /// The token as the client sent it.
    pub token: Arc<str>,
}

impl std::fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticate")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// When the token stops being valid; the connection is closed then.
    pub expires_at: Option<Timestamp>,
}

impl Identity {
    /// A user on one of their devices, with no expiry: what a bot, an admin job or an
    /// integrator's own authentication acts as when it calls the chat engine.
    pub fn new(user: UserId, device: DeviceId) -> Self {
        Self {
            user,
            device,
            expires_at: None,
        }
    }
}

impl Operation for Authenticate {
    type Response = Identity;
    const NAME: &'static str = "authenticate";
}

/// An authenticator, as one bound.
pub trait AuthService: Handles<Authenticate> {}

impl<S> AuthService for S where S: Handles<Authenticate> {}
