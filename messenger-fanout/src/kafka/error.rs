//! The Kafka backend's private errors and their conversion to [`messenger_core::Error`].

use messenger_core::{Error, ErrorKind};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::BACKEND;

/// What can go wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub(super) enum KafkaFanoutError {
    /// The configuration is refused (by us or by librdkafka).
    #[error("invalid kafka configuration: {0}")]
    Config(String),
    /// librdkafka could not create a client.
    #[error("creating the kafka {what} failed")]
    Client {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
    /// An admin request (create, delete, metadata) failed as a whole.
    #[error("kafka {operation} of topic {topic} failed")]
    Admin {
        operation: &'static str,
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// The broker refused an admin operation on one topic.
    #[error("kafka {operation} of topic {topic} refused: {code}")]
    TopicRefused {
        operation: &'static str,
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// Producing to a topic failed (queue full, timeout, unknown topic, broker down...).
    #[error("producing to kafka topic {topic} failed")]
    Produce {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// The producer went away before it reported the delivery.
    #[error("the kafka producer dropped the delivery to {topic}")]
    ProduceCanceled { topic: String },
    /// An envelope or event could not be encoded.
    #[error("encoding a kafka record failed")]
    Encode(#[source] serde_json::Error),
    /// Some remote nodes did not get their envelope.
    #[error("{failed} of {nodes} remote nodes did not get the event; first: {first}")]
    PartialDelivery {
        failed: usize,
        nodes: usize,
        #[source]
        first: Box<KafkaFanoutError>,
    },
}

impl KafkaFanoutError {
    pub(super) fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) => ErrorKind::InvalidRequest,
            Self::Client { .. } => ErrorKind::InvalidRequest,
            Self::Admin { source, .. } | Self::Produce { source, .. } => kind_of(source),
            Self::TopicRefused { code, .. } => kind_of_code(*code),
            Self::ProduceCanceled { .. } => ErrorKind::Unavailable,
            Self::Encode(_) => ErrorKind::Unexpected,
            Self::PartialDelivery { first, .. } => first.kind(),
        }
    }
}

fn kind_of(err: &KafkaError) -> ErrorKind {
    match err {
        KafkaError::ClientConfig(..) => ErrorKind::InvalidRequest,
        other => other
            .rdkafka_error_code()
            .map_or(ErrorKind::Unavailable, kind_of_code),
    }
}

fn kind_of_code(code: RDKafkaErrorCode) -> ErrorKind {
    match code {
        RDKafkaErrorCode::QueueFull => ErrorKind::Overloaded,
        RDKafkaErrorCode::MessageTimedOut
        | RDKafkaErrorCode::RequestTimedOut
        | RDKafkaErrorCode::OperationTimedOut => ErrorKind::Timeout,
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidTopic => {
            ErrorKind::InvalidRequest
        }
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => ErrorKind::Forbidden,
        RDKafkaErrorCode::SaslAuthenticationFailed => ErrorKind::Unauthorized,
        // Unknown topic (a node restarting or gone), broker down, leader moving,
        // not enough replicas, ...: all may pass.
        _ => ErrorKind::Unavailable,
    }
}

impl From<KafkaFanoutError> for Error {
    fn from(err: KafkaFanoutError) -> Self {
        Error::new(err.kind(), err.to_string())
            .with_backend(BACKEND)
            .with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn produce(code: RDKafkaErrorCode) -> Error {
        KafkaFanoutError::Produce {
            topic: "t".to_owned(),
            source: KafkaError::MessageProduction(code),
        }
        .into()
    }

    #[test]
    fn produce_errors_map_to_kinds_a_caller_can_act_on() {
        assert_eq!(
            produce(RDKafkaErrorCode::QueueFull).kind(),
            ErrorKind::Overloaded
        );
        assert_eq!(
            produce(RDKafkaErrorCode::MessageTimedOut).kind(),
            ErrorKind::Timeout
        );
        let unknown = produce(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert_eq!(unknown.kind(), ErrorKind::Unavailable);
        assert!(unknown.is_temporary());
        assert_eq!(unknown.backend(), Some("kafka"));
        assert_eq!(
            produce(RDKafkaErrorCode::MessageSizeTooLarge).kind(),
            ErrorKind::InvalidRequest
        );
    }

    #[test]
    fn a_partial_delivery_has_the_kind_of_its_first_failure() {
        let err: Error = KafkaFanoutError::PartialDelivery {
            failed: 1,
            nodes: 3,
            first: Box::new(KafkaFanoutError::ProduceCanceled {
                topic: "t".to_owned(),
            }),
        }
        .into();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.message().contains("1 of 3"));
    }
}
