//! What an error reply from the exchange means for the subscription it answers.

use protocol::ErrorCode;

/// The command an error reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answered {
    Subscribe,
    AddMarkets,
    DeleteMarkets,
    Unsubscribe,
    GetSnapshot,
    /// No command of ours: an unsolicited error (a dead sid), or an unknown id.
    Nothing,
}

/// What the exchange's error tells us to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Policy {
    /// Nothing to change.
    Ignore,
    /// The subscription is gone at the exchange (an unsubscribe it refused): forget it.
    Forget,
    /// The sid is dead (a terminal error): forget it, report it; the next reconcile resubscribes
    /// its markets.
    Kill,
    /// Too many markets per sid: a subscribe's batch is halved, an add keeps what the sid holds.
    LearnLimit,
    /// Only the market the exchange named is refused (on this connection); the rest of the batch
    /// is tried again by the next reconcile, so a client's bogus ticker cannot poison its
    /// neighbours.
    RefuseNamed,
    /// Every market of the command (the whole channel for an unfiltered subscribe) is refused on
    /// this connection.
    RefuseBatch,
}

/// The policy for an error reply. `batch` is how many markets the command carried (0 for a
/// subscription to every market); `named` says whether the exchange named one of them.
pub(super) fn policy(
    answered: Answered,
    code: Option<ErrorCode>,
    batch: usize,
    named: bool,
) -> Policy {
    let terminal = code.is_some_and(ErrorCode::is_terminal);
    match answered {
        Answered::Subscribe => match code {
            Some(ErrorCode::MarketLimitExceeded) if batch > 1 => Policy::LearnLimit,
            Some(code) if batch > 0 && named && names_unknown_market(code) => Policy::RefuseNamed,
            _ => Policy::RefuseBatch,
        },
        Answered::AddMarkets if terminal => Policy::Kill,
        Answered::AddMarkets => match code {
            Some(ErrorCode::MarketLimitExceeded) => Policy::LearnLimit,
            Some(code) if named && names_unknown_market(code) => Policy::RefuseNamed,
            _ => Policy::RefuseBatch,
        },
        Answered::Unsubscribe => Policy::Forget,
        Answered::DeleteMarkets | Answered::GetSnapshot | Answered::Nothing if terminal => {
            Policy::Kill
        }
        Answered::DeleteMarkets | Answered::GetSnapshot | Answered::Nothing => Policy::Ignore,
    }
}

/// An error naming one market refuses that market: 16 "Market not found" from older servers, 11
/// "Invalid parameter" from the newest (which retired 16).
fn names_unknown_market(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::MarketNotFound | ErrorCode::InvalidParameter
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Answered::*;
    use Policy::*;

    #[test]
    fn the_error_policy_table() {
        let limit = Some(ErrorCode::MarketLimitExceeded);
        let not_found = Some(ErrorCode::MarketNotFound);
        let overflow = Some(ErrorCode::SubscriptionBufferOverflow);
        let channel_error = Some(ErrorCode::ChannelError);
        let params = Some(ErrorCode::InvalidParameter);
        #[rustfmt::skip]
        let table = [
            // answered,     code,          batch, named, policy
            (Subscribe,     limit,         3,     false, LearnLimit),
            (Subscribe,     limit,         1,     false, RefuseBatch),
            (Subscribe,     not_found,     3,     true,  RefuseNamed),
            (Subscribe,     not_found,     3,     false, RefuseBatch),
            (Subscribe,     params,        3,     false, RefuseBatch),
            (Subscribe,     params,        3,     true,  RefuseNamed),
            (Subscribe,     params,        0,     false, RefuseBatch),
            (Subscribe,     overflow,      2,     false, RefuseBatch),
            (Subscribe,     None,          2,     false, RefuseBatch),
            (AddMarkets,    limit,         2,     false, LearnLimit),
            (AddMarkets,    not_found,     3,     true,  RefuseNamed),
            (AddMarkets,    not_found,     3,     false, RefuseBatch),
            (AddMarkets,    params,        3,     false, RefuseBatch),
            (AddMarkets,    params,        3,     true,  RefuseNamed),
            (AddMarkets,    overflow,      3,     false, Kill),
            (AddMarkets,    channel_error, 3,     false, Kill),
            (DeleteMarkets, overflow,      1,     false, Kill),
            (DeleteMarkets, params,        1,     false, Ignore),
            (GetSnapshot,   channel_error, 1,     false, Kill),
            (GetSnapshot,   params,        1,     false, Ignore),
            (Unsubscribe,   params,        0,     false, Forget),
            (Unsubscribe,   overflow,      0,     false, Forget),
            (Nothing,       overflow,      0,     false, Kill),
            (Nothing,       params,        0,     false, Ignore),
            (Nothing,       None,          0,     false, Ignore),
        ];
        for (answered, code, batch, named, want) in table {
            assert_eq!(
                policy(answered, code, batch, named),
                want,
                "{answered:?} {code:?} batch {batch} named {named}"
            );
        }
    }
}
