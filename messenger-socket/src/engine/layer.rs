//! Layers for the engine's services that stock tower does not provide.
//!
//! Which stock layers fit, and why:
//!
//! - [`tower::timeout::Timeout`], [`tower::limit::ConcurrencyLimit`],
//!   [`tower::load_shed::LoadShed`], [`tower::retry::Retry`] and tracing layers wrap the
//!   [`Engine`](super::Engine) (and every capability service: store, sequencer, fanout,
//!   presence) as they wrap any service: the engine is `Clone` and always ready, so a wrapped
//!   engine is too. Their errors come back boxed; [`messenger_core::call`] and
//!   [`messenger_core::Error::from_boxed`] turn them into `Timeout` and `Overloaded` errors
//!   (clients see `timeout` and `overloaded`). A retry policy should retry only
//!   [`Error::is_temporary`](messenger_core::Error::is_temporary) errors: sends are idempotent
//!   on `client_msg_id`, so a retried send is safe.
//! - [`tower::limit::RateLimit`] is not `Clone` and limits all callers together; a messenger
//!   limits each user. [`PerUserRateLimitLayer`] does that, for every request that names who
//!   acts ([`Acting`]).
//! - tower's `Buffer` takes one request type, while the engine and the store answer
//!   many. Neither needs it: both are `Clone` and always ready, so each caller clones the
//!   service instead of sharing one through a channel. Buffer one operation (say
//!   `Buffer<Engine<B>, SendMessage>`) when a queue is what you want.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use governor::clock::DefaultClock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use messenger_core::protocol::ErrorCode;
use messenger_core::{BoxError, Error, UserId};

use super::{
    AddMembers, CreateGroup, GetMembers, LeaveGroup, ListConversations, MarkReceipt, OpenDirect,
    ReadHistory, ReadReceipts, RemoveMember, SendMessage, SetRole, SetTyping,
};

/// One clock for every rate limiter of the process. Creating a clock calibrates it (CPUID
/// instructions, which trap to the hypervisor on a VM): with two new clocks per connection
/// that was 19% of the server's CPU in a handshake storm. A clone shares the calibration.
pub(crate) static CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

/// A request made on behalf of a user.
pub trait Acting {
    /// The user the request acts as.
    fn acting_user(&self) -> &UserId;
}

macro_rules! acting {
    ($($request:ty => $($field:ident).+),+ $(,)?) => {$(
        impl Acting for $request {
            fn acting_user(&self) -> &UserId {
                &self.$($field).+
            }
        }
    )+};
}

acting!(
    SendMessage => actor.user,
    OpenDirect => actor.user,
    CreateGroup => actor.user,
    AddMembers => actor.user,
    RemoveMember => actor.user,
    SetRole => actor.user,
    LeaveGroup => actor.user,
    MarkReceipt => actor.user,
    SetTyping => actor.user,
    ReadHistory => actor.user,
    GetMembers => actor.user,
    ReadReceipts => actor.user,
    ListConversations => user,
);

/// Calls between two sweeps of users idle long enough to have their full burst again.
const SWEEP_EVERY: u64 = 4096;

/// Limits each user to `per_second` requests (with bursts of `burst`) through the wrapped
/// service; over the limit a request is refused at once with `rate_limited` (kind
/// `Overloaded`, temporary) and never reaches the service. Users share nothing: one user's
/// burst never slows another. Clones share the limits.
#[derive(Debug, Clone)]
pub struct PerUserRateLimitLayer {
    limits: Arc<Limits>,
}

#[derive(Debug)]
struct Limits {
    limiter: DefaultKeyedRateLimiter<UserId>,
    calls: AtomicU64,
}

impl PerUserRateLimitLayer {
    /// `per_second` requests a second per user, bursts of up to `burst`.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            limits: Arc::new(Limits {
                limiter: RateLimiter::dashmap_with_clock(quota, CLOCK.clone()),
                calls: AtomicU64::new(0),
            }),
        }
    }
}

impl<S> tower::Layer<S> for PerUserRateLimitLayer {
    type Service = PerUserRateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PerUserRateLimit {
            inner,
            limits: Arc::clone(&self.limits),
        }
    }
}

/// The service of [`PerUserRateLimitLayer`].
#[derive(Debug, Clone)]
pub struct PerUserRateLimit<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S, R> tower::Service<R> for PerUserRateLimit<S>
where
    S: tower::Service<R>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    R: Acting,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures_util::future::Either<
        futures_util::future::MapErr<S::Future, fn(S::Error) -> BoxError>,
        std::future::Ready<Result<S::Response, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        use futures_util::TryFutureExt;
        let calls = self.limits.calls.fetch_add(1, Ordering::Relaxed);
        if calls % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limits.limiter.retain_recent();
        }
        if self
            .limits
            .limiter
            .check_key(request.acting_user())
            .is_err()
        {
            let refused = Error::refused(ErrorCode::RateLimited, "too many requests; slow down");
            return futures_util::future::Either::Right(std::future::ready(Err(refused.into())));
        }
        let into: fn(S::Error) -> BoxError = Into::into;
        futures_util::future::Either::Left(self.inner.call(request).map_err(into))
    }
}

#[cfg(test)]
mod tests {
    use messenger_core::auth::Identity;
    use messenger_core::{ConversationId, DeviceId, ErrorKind};
    use tower::{Layer, Service, ServiceExt};
    use tower_test::mock;

    use super::*;

    fn typing(user: &str) -> SetTyping {
        let user = UserId::new(user).unwrap();
        SetTyping {
            actor: Identity::new(user, DeviceId::new("phone").unwrap()),
            conversation: ConversationId::new("g:test").unwrap(),
            active: true,
        }
    }

    #[tokio::test]
    async fn each_user_has_a_budget_of_their_own() {
        let layer = PerUserRateLimitLayer::new(NonZeroU32::MIN, NonZeroU32::new(2).unwrap());
        let (service, mut handle) = mock::pair::<SetTyping, ()>();
        let mut service = layer.layer(service);
        handle.allow(10);

        // Alice's burst of two passes, her third is refused without reaching the service.
        for _ in 0..2 {
            let call = service.ready().await.unwrap().call(typing("alice"));
            let (request, reply) = handle.next_request().await.unwrap();
            assert_eq!(request.actor.user.as_str(), "alice");
            reply.send_response(());
            call.await.unwrap();
        }
        let refused = service
            .ready()
            .await
            .unwrap()
            .call(typing("alice"))
            .await
            .unwrap_err();
        let refused = Error::from_boxed(refused);
        assert_eq!(refused.kind(), ErrorKind::Overloaded);
        assert_eq!(refused.refusal_code(), Some(ErrorCode::RateLimited));
        assert!(refused.is_temporary());

        // Bob is not slowed by alice, and a clone of the layer's service shares the limits.
        let mut clone = service.clone();
        let call = clone.ready().await.unwrap().call(typing("bob"));
        let (request, reply) = handle.next_request().await.unwrap();
        assert_eq!(request.actor.user.as_str(), "bob");
        reply.send_response(());
        call.await.unwrap();
        assert!(
            clone
                .ready()
                .await
                .unwrap()
                .call(typing("alice"))
                .await
                .is_err(),
            "the clone sees alice's spent budget"
        );
    }

    #[tokio::test]
    async fn readiness_and_errors_of_the_inner_service_pass_through() {
        let layer = PerUserRateLimitLayer::new(NonZeroU32::MAX, NonZeroU32::MAX);
        let (service, mut handle) = mock::pair::<SetTyping, ()>();
        let mut service = layer.layer(service);

        handle.allow(0);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(service.poll_ready(&mut cx).is_pending());

        handle.allow(1);
        assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        let call = service.ready().await.unwrap().call(typing("carol"));
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error(Error::refused(ErrorCode::NotMember, "not a member"));
        let err = Error::from_boxed(call.await.unwrap_err());
        assert_eq!(err.refusal_code(), Some(ErrorCode::NotMember));
    }
}
