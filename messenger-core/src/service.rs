//! How capabilities meet: every operation is a request type with a typed response, and every
//! capability is a [`tower::Service`] for each of its request types.
//!
//! [`Handles<R>`] names "a cloneable, sendable tower service for request `R`", whatever layers
//! wrap it; [`call`] runs one request on such a service and recovers an [`Error`] from the
//! boxed errors layers produce.

use std::future::Future;
use std::pin::Pin;

use tower::{Service, ServiceExt};

use crate::error::{BoxError, Error};

/// The boxed, sendable future of one backend operation: what the object-safe (`Dyn*`) forms
/// of the backend traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// A request type and the response it produces.
pub trait Operation: Send + 'static {
    /// What a successful call returns.
    type Response: Send + 'static;
    /// A stable name for metrics labels and logs.
    const NAME: &'static str;
}

/// A tower service that handles request `R`: cloneable, `Send`, with any error convertible to
/// [`BoxError`] (our own [`Error`], or what a tower layer wraps it in).
pub trait Handles<R: Operation>:
    Service<R, Response = R::Response, Error: Into<BoxError>, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, R> Handles<R> for S
where
    R: Operation,
    S: Service<R, Response = R::Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
}

/// Runs one request on a clone of `service`, waiting for it to be ready first.
///
/// # Errors
/// Whatever the service returns, converted with [`Error::from_boxed`].
///
/// # Cancellation safety
/// Dropping the future drops the in-flight request; whether its effect happened depends on
/// the operation (see each request type).
pub async fn call<S, R>(service: &S, request: R) -> Result<R::Response, Error>
where
    R: Operation,
    S: Handles<R>,
{
    service
        .clone()
        .oneshot(request)
        .await
        .map_err(|err| Error::from_boxed(err.into()))
}

/// Implements [`tower::Service`] for a backend wrapper type, one request type at a time, by
/// forwarding to an async method of the backend.
///
/// Used by the capability crates so that backend authors write plain async methods and never
/// `poll_ready`. The wrapper must be `Clone` and hold its backend in an `Arc` field named
/// `backend`.
#[macro_export]
macro_rules! forward_service {
    ($wrapper:ident<$backend:ident: $bound:path>, $request:ty => $method:ident) => {
        impl<$backend: $bound> ::tower::Service<$request> for $wrapper<$backend> {
            type Response = <$request as $crate::service::Operation>::Response;
            type Error = $crate::Error;
            type Future = ::std::pin::Pin<
                Box<
                    dyn ::std::future::Future<Output = Result<Self::Response, $crate::Error>>
                        + Send
                        + 'static,
                >,
            >;

            fn poll_ready(
                &mut self,
                _cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Result<(), Self::Error>> {
                ::std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: $request) -> Self::Future {
                let backend = ::std::sync::Arc::clone(&self.backend);
                Box::pin(async move { backend.$method(request).await })
            }
        }
    };
}
