//! What the control plane refuses with, and the one place that becomes an HTTP status.

use switchyard_admin::AdminError;
use switchyard_core::migration::TransitionError;

/// Why a transition or a reload did not happen. Nothing moved when one of these is
/// answered (a rollback never answers one: it always moves).
#[derive(Debug, Clone, PartialEq)]
pub enum ControlError {
    /// The state machine refuses (unknown phase, at the last phase, rolled back).
    Invalid(TransitionError),
    /// Another writer changed the state first (another replica, or a rollback meanwhile).
    Conflict(String),
    /// The shared store cannot be reached: this replica keeps serving on the state it knew.
    StoreUnavailable(String),
    /// The state could not be written to the state file (single mode, where the file is
    /// what a restart comes back to).
    PersistFailed(String),
    /// `to` refused the preflight probe.
    PreflightRefused(String),
    /// The config file is invalid; every error, with file, line and key.
    ConfigRefused(Vec<String>),
    /// No migration of that name.
    UnknownMigration(String),
    /// A call about one migration, unnamed, in a gateway of several: the names to pick from.
    NameAMigration(Vec<String>),
}

impl std::fmt::Display for ControlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlError::Invalid(e) => write!(f, "{e}"),
            ControlError::Conflict(m)
            | ControlError::StoreUnavailable(m)
            | ControlError::PersistFailed(m)
            | ControlError::PreflightRefused(m) => f.write_str(m),
            ControlError::ConfigRefused(errors) => {
                write!(f, "config refused; the running config keeps serving")?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
            ControlError::UnknownMigration(name) => write!(f, "no migration named `{name}`"),
            ControlError::NameAMigration(names) => write!(
                f,
                "this gateway runs several migrations ({}): name one (/admin/migrations/NAME/…, or --migration NAME); an unnamed rollback rolls back all of them",
                names.join(", ")
            ),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<TransitionError> for ControlError {
    fn from(e: TransitionError) -> Self {
        ControlError::Invalid(e)
    }
}

/// The one mapping from control-plane errors to HTTP statuses.
impl From<ControlError> for AdminError {
    fn from(e: ControlError) -> Self {
        let status = match &e {
            ControlError::Invalid(TransitionError::UnknownPhase(_)) => 400,
            ControlError::Invalid(
                TransitionError::AtLastPhase
                | TransitionError::RolledBack
                | TransitionError::NotAtLastPhase
                | TransitionError::AlreadyFinished,
            ) => 409,
            ControlError::Conflict(_) | ControlError::PreflightRefused(_) => 409,
            ControlError::StoreUnavailable(_) => 503,
            ControlError::PersistFailed(_) => 500,
            ControlError::ConfigRefused(_) | ControlError::NameAMigration(_) => 400,
            ControlError::UnknownMigration(_) => 404,
        };
        match e {
            ControlError::ConfigRefused(details) => AdminError {
                status,
                message: "config refused; the running config keeps serving".into(),
                details,
            },
            other => AdminError::new(status, other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let status = |e: ControlError| AdminError::from(e).status;
        assert_eq!(
            status(TransitionError::UnknownPhase("x".into()).into()),
            400
        );
        assert_eq!(status(TransitionError::AtLastPhase.into()), 409);
        assert_eq!(status(ControlError::Conflict("c".into())), 409);
        assert_eq!(status(ControlError::PreflightRefused("p".into())), 409);
        assert_eq!(status(ControlError::StoreUnavailable("s".into())), 503);
        assert_eq!(status(ControlError::PersistFailed("f".into())), 500);
        let refused = AdminError::from(ControlError::ConfigRefused(vec!["a:1: b".into()]));
        assert_eq!((refused.status, refused.details.len()), (400, 1));
    }
}
