//! One error type for the REST and gRPC faces: each variant maps to an HTTP status and a gRPC code.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or would make the account inconsistent; nothing was stored.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The object would clash with one that exists (a name, a key).
    #[error("{0}")]
    Conflict(String),
    /// The request could not be read at all (not JSON, wrong types): nothing was looked at.
    #[error("{0}")]
    BadRequest(String),
    /// Login refused for good: unknown peer, or a setup key that is unknown, expired, revoked or
    /// used up. Clients must not retry.
    #[error("{0}")]
    PermissionDenied(String),
    /// The request lacks something it needs (NetBird: a Login without peer meta).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(message.into()))
}

pub fn not_found<T>(what: &str, id: &str) -> Result<T> {
    Err(Error::NotFound(format!("{what} {id} not found")))
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        match &e {
            Error::Invalid(m) => tonic::Status::invalid_argument(m.clone()),
            Error::NotFound(m) => tonic::Status::not_found(m.clone()),
            Error::Conflict(m) => tonic::Status::already_exists(m.clone()),
            Error::BadRequest(m) => tonic::Status::invalid_argument(m.clone()),
            Error::PermissionDenied(m) => tonic::Status::permission_denied(m.clone()),
            Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m.clone()),
            Error::Internal(_) => tonic::Status::internal(e.to_string()),
        }
    }
}
