//! The status codes a failed command carries, as the gRPC numbers
//! (`google.rpc.Code`), without depending on a gRPC library: the server
//! turns them into its own statuses, and clients read the same numbers.

/// A `google.rpc.Code` a command may fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    /// The request is malformed whatever the state (a bad path, an unknown
    /// enum value, a limit on a field's size).
    InvalidArgument = 3,
    /// The node or the handle does not exist.
    NotFound = 5,
    /// A node exists where a create wanted none.
    AlreadyExists = 6,
    /// The call does not carry its session's secret.
    PermissionDenied = 7,
    /// A limit of the cell is reached (sessions, handles, nodes, waiters,
    /// the state's footprint).
    ResourceExhausted = 8,
    /// The state does not allow the call now (a reason says why).
    FailedPrecondition = 9,
}

impl Code {
    const ALL: [Code; 6] = [
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
    ];

    /// The gRPC number.
    pub fn number(self) -> i32 {
        self as i32
    }

    /// The code with this gRPC number, if failures use it (`None` for any
    /// other number, as a decoded outcome may carry).
    pub fn from_number(number: i32) -> Option<Code> {
        Code::ALL.into_iter().find(|code| code.number() == number)
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn numbers_round_trip_and_unknown_numbers_are_none() {
        for code in Code::ALL {
            assert_eq!(Code::from_number(code.number()), Some(code));
        }
        assert_eq!(Code::from_number(0), None, "OK is no failure");
        assert_eq!(Code::from_number(13), None, "INTERNAL is never a failure of apply");
        assert_eq!(Code::FailedPrecondition.number(), 9, "the google.rpc.Code number");
    }
}
