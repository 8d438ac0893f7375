//! Client-to-server commands, parsed and validated, and the replies a server sends back.
//!
//! [`Command::parse`] turns one text frame into a command or into the exact error reply the
//! reference prescribes (code and message), so the simulator and the relay answer bad commands
//! identically. [`reply`] builds the reply frames.

use serde_json::{json, Map, Value};

use crate::message::Channel;

/// The error codes of the reference (section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    UnableToProcess = 1,
    ParamsRequired = 2,
    ChannelsRequired = 3,
    SidsRequired = 4,
    UnknownCommand = 5,
    AlreadySubscribed = 6,
    UnknownSid = 7,
    UnknownChannel = 8,
    AuthRequired = 9,
    ChannelError = 10,
    InvalidParameter = 11,
    ExactlyOneSid = 12,
    UnsupportedAction = 13,
    MarketTickerRequired = 14,
    ActionRequired = 15,
    MarketNotFound = 16,
    InternalError = 17,
    CommandTimeout = 18,
    SubscriptionBufferOverflow = 25,
    MarketLimitExceeded = 26,
    TooManyRequests = 27,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn from_code(code: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            UnableToProcess,
            ParamsRequired,
            ChannelsRequired,
            SidsRequired,
            UnknownCommand,
            AlreadySubscribed,
            UnknownSid,
            UnknownChannel,
            AuthRequired,
            ChannelError,
            InvalidParameter,
            ExactlyOneSid,
            UnsupportedAction,
            MarketTickerRequired,
            ActionRequired,
            MarketNotFound,
            InternalError,
            CommandTimeout,
            SubscriptionBufferOverflow,
            MarketLimitExceeded,
            TooManyRequests,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }

    /// The standard message text.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::UnableToProcess => "Unable to process message",
            ErrorCode::ParamsRequired => "Params required",
            ErrorCode::ChannelsRequired => "Channels required",
            ErrorCode::SidsRequired => "Subscription IDs required",
            ErrorCode::UnknownCommand => "Unknown command",
            ErrorCode::AlreadySubscribed => "Already subscribed",
            ErrorCode::UnknownSid => "Unknown subscription ID",
            ErrorCode::UnknownChannel => "Unknown channel name",
            ErrorCode::AuthRequired => "Authentication required",
            ErrorCode::ChannelError => "Channel error",
            ErrorCode::InvalidParameter => "Invalid parameter",
            ErrorCode::ExactlyOneSid => "Exactly one subscription ID is required",
            ErrorCode::UnsupportedAction => "Unsupported action",
            ErrorCode::MarketTickerRequired => "Market Ticker required",
            ErrorCode::ActionRequired => "Action required",
            ErrorCode::MarketNotFound => "Market not found",
            ErrorCode::InternalError => "Internal error",
            ErrorCode::CommandTimeout => "Command timeout",
            ErrorCode::SubscriptionBufferOverflow => "Subscription buffer overflow",
            ErrorCode::MarketLimitExceeded => "Subscription market limit exceeded",
            ErrorCode::TooManyRequests => "Too many requests",
        }
    }

    /// Terminal errors: the sid is dead and must be resubscribed (10, 25, and 17 treated alike).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ErrorCode::ChannelError
                | ErrorCode::SubscriptionBufferOverflow
                | ErrorCode::InternalError
        )
    }
}

/// A refused command: the id to echo, the code, and an optional market the error is about.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("command {id} refused: {} ({})", code.message(), code.code())]
pub struct CommandError {
    pub id: u64,
    pub code: ErrorCode,
    pub market_ticker: Option<String>,
}

impl CommandError {
    pub fn new(id: u64, code: ErrorCode) -> CommandError {
        CommandError {
            id,
            code,
            market_ticker: None,
        }
    }

    /// The error reply frame.
    pub fn reply(&self) -> String {
        reply::error(self.id, self.code, self.market_ticker.as_deref())
    }
}

/// A validated command. `id` 0 means the client gave none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub id: u64,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Subscribe(Subscribe),
    Unsubscribe {
        sids: Vec<u64>,
    },
    UpdateSubscription(UpdateSubscription),
    ListSubscriptions,
    /// Relay extension: `{"id":N,"cmd":"ping"}`, answered `{"id":N,"type":"pong"}`.
    Ping,
    /// Relay extension: first-message authentication.
    Auth {
        token: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribe {
    pub channels: Vec<Channel>,
    /// `market_ticker` or `market_tickers`; `None` when neither was given (all markets).
    pub markets: Option<Vec<String>>,
    pub send_initial_snapshot: bool,
    pub skip_ticker_ack: bool,
    /// `use_yes_price`, as given (the exchange's default is false).
    pub use_yes_price: Option<bool>,
    /// `resume_from`: a relay extension (never sent to the exchange), the position of the last
    /// private message a reconnecting client received.
    pub resume_from: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateAction {
    AddMarkets,
    DeleteMarkets,
    GetSnapshot,
}

impl UpdateAction {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateAction::AddMarkets => "add_markets",
            UpdateAction::DeleteMarkets => "delete_markets",
            UpdateAction::GetSnapshot => "get_snapshot",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateSubscription {
    pub sid: u64,
    pub markets: Vec<String>,
    pub action: UpdateAction,
}

impl Command {
    /// Parses and validates one text frame. The error carries the reply to send.
    pub fn parse(frame: &[u8]) -> Result<Command, CommandError> {
        let value: Value = serde_json::from_slice(frame)
            .map_err(|_| CommandError::new(0, ErrorCode::UnableToProcess))?;
        let Value::Object(obj) = value else {
            return Err(CommandError::new(0, ErrorCode::UnableToProcess));
        };
        let id = match obj.get("id") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .ok_or(CommandError::new(0, ErrorCode::InvalidParameter))?,
        };
        let err = |code| CommandError::new(id, code);
        let cmd = match obj.get("cmd") {
            Some(Value::String(cmd)) => cmd.as_str(),
            Some(_) => return Err(err(ErrorCode::InvalidParameter)),
            None => return Err(err(ErrorCode::UnableToProcess)),
        };
        let params = match obj.get("params") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(err(ErrorCode::InvalidParameter)),
        };
        let action = match cmd {
            "subscribe" => Action::Subscribe(parse_subscribe(id, params)?),
            "unsubscribe" => {
                let params = params.ok_or(err(ErrorCode::ParamsRequired))?;
                let sids = match params.get("sids") {
                    None | Some(Value::Null) => return Err(err(ErrorCode::SidsRequired)),
                    Some(v) => {
                        u64_list(v, MAX_SIDS_PER_COMMAND).ok_or(err(ErrorCode::InvalidParameter))?
                    }
                };
                if sids.is_empty() {
                    return Err(err(ErrorCode::SidsRequired));
                }
                Action::Unsubscribe { sids }
            }
            "update_subscription" => Action::UpdateSubscription(parse_update(id, params)?),
            "list_subscriptions" => Action::ListSubscriptions,
            "ping" => Action::Ping,
            "auth" => {
                let token = params
                    .and_then(|p| p.get("token"))
                    .and_then(Value::as_str)
                    .ok_or(err(ErrorCode::ParamsRequired))?;
                Action::Auth {
                    token: token.to_owned(),
                }
            }
            _ => return Err(err(ErrorCode::UnknownCommand)),
        };
        Ok(Command { id, action })
    }

    /// Encodes the command as a frame (the upstream sends these).
    pub fn to_json(&self) -> String {
        let (cmd, params) = match &self.action {
            Action::Subscribe(s) => {
                let mut p = Map::new();
                p.insert("channels".into(), json!(s.channels));
                if let Some(markets) = &s.markets {
                    p.insert("market_tickers".into(), json!(markets));
                }
                if s.send_initial_snapshot {
                    p.insert("send_initial_snapshot".into(), json!(true));
                }
                if s.skip_ticker_ack {
                    p.insert("skip_ticker_ack".into(), json!(true));
                }
                if let Some(yes) = s.use_yes_price {
                    p.insert("use_yes_price".into(), json!(yes));
                }
                ("subscribe", Some(Value::Object(p)))
            }
            Action::Unsubscribe { sids } => ("unsubscribe", Some(json!({ "sids": sids }))),
            Action::UpdateSubscription(u) => (
                "update_subscription",
                Some(
                    json!({ "sid": u.sid, "market_tickers": u.markets, "action": u.action.as_str() }),
                ),
            ),
            Action::ListSubscriptions => ("list_subscriptions", None),
            Action::Ping => ("ping", None),
            Action::Auth { token } => ("auth", Some(json!({ "token": token }))),
        };
        let mut obj = Map::new();
        obj.insert("id".into(), json!(self.id));
        obj.insert("cmd".into(), json!(cmd));
        if let Some(params) = params {
            obj.insert("params".into(), params);
        }
        Value::Object(obj).to_string()
    }
}

/// Most markets one command may name (more is error 11): a command must not fan out without
/// bound into topics, replies or upstream work.
pub const MAX_MARKETS_PER_COMMAND: usize = 1_000;
/// Most sids one `unsubscribe` may name (more is error 11).
pub const MAX_SIDS_PER_COMMAND: usize = 100;
/// Longest market ticker accepted (longer is error 11).
pub const MAX_TICKER_LEN: usize = 128;

/// A list of integers, duplicates dropped (first occurrence kept), at most `max` long.
fn u64_list(v: &Value, max: usize) -> Option<Vec<u64>> {
    let list = v.as_array()?;
    if list.len() > max {
        return None;
    }
    let mut out: Vec<u64> = Vec::with_capacity(list.len());
    for item in list {
        let n = item.as_u64()?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Some(out)
}

/// A list of strings, duplicates dropped (first occurrence kept), at most `max` long.
fn string_list(v: &Value, max: usize) -> Option<Vec<String>> {
    let list = v.as_array()?;
    if list.len() > max {
        return None;
    }
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let s = item.as_str()?;
        if seen.insert(s) {
            out.push(s.to_owned());
        }
    }
    Some(out)
}

fn valid_ticker(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_TICKER_LEN
}

fn opt_bool(
    params: &Map<String, Value>,
    key: &str,
    err: CommandError,
) -> Result<Option<bool>, CommandError> {
    match params.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(err),
    }
}

/// `market_ticker` xor `market_tickers`; `None` when neither is present.
fn markets(id: u64, params: &Map<String, Value>) -> Result<Option<Vec<String>>, CommandError> {
    let invalid = CommandError::new(id, ErrorCode::InvalidParameter);
    let one = params.get("market_ticker").filter(|v| !v.is_null());
    let many = params.get("market_tickers").filter(|v| !v.is_null());
    match (one, many) {
        (Some(_), Some(_)) => Err(invalid),
        (Some(v), None) => {
            let t = v.as_str().filter(|t| valid_ticker(t)).ok_or(invalid)?;
            Ok(Some(vec![t.to_owned()]))
        }
        (None, Some(v)) => {
            let list = string_list(v, MAX_MARKETS_PER_COMMAND).ok_or(invalid.clone())?;
            if !list.iter().all(|t| valid_ticker(t)) {
                return Err(invalid);
            }
            Ok(Some(list))
        }
        (None, None) => Ok(None),
    }
}

fn parse_subscribe(
    id: u64,
    params: Option<&Map<String, Value>>,
) -> Result<Subscribe, CommandError> {
    let err = |code| CommandError::new(id, code);
    let params = params.ok_or(err(ErrorCode::ParamsRequired))?;
    let names = match params.get("channels") {
        None | Some(Value::Null) => return Err(err(ErrorCode::ChannelsRequired)),
        Some(v) => {
            string_list(v, Channel::ALL.len() * 4).ok_or(err(ErrorCode::InvalidParameter))?
        }
    };
    if names.is_empty() {
        return Err(err(ErrorCode::ChannelsRequired));
    }
    let mut channels = Vec::with_capacity(names.len());
    for name in &names {
        let channel = Channel::parse(name).ok_or(err(ErrorCode::UnknownChannel))?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    let markets = markets(id, params)?;
    if markets.as_ref().is_some_and(Vec::is_empty)
        || (markets.is_none() && channels.iter().any(|c| c.requires_market()))
    {
        return Err(err(ErrorCode::MarketTickerRequired));
    }
    let invalid = err(ErrorCode::InvalidParameter);
    Ok(Subscribe {
        channels,
        markets,
        send_initial_snapshot: opt_bool(params, "send_initial_snapshot", invalid.clone())?
            .unwrap_or(false),
        skip_ticker_ack: opt_bool(params, "skip_ticker_ack", invalid.clone())?.unwrap_or(false),
        use_yes_price: opt_bool(params, "use_yes_price", invalid.clone())?,
        resume_from: match params.get("resume_from") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
            Some(_) => return Err(invalid),
        },
    })
}

fn parse_update(
    id: u64,
    params: Option<&Map<String, Value>>,
) -> Result<UpdateSubscription, CommandError> {
    let err = |code| CommandError::new(id, code);
    let params = params.ok_or(err(ErrorCode::ParamsRequired))?;
    let sid = match (
        params.get("sid").filter(|v| !v.is_null()),
        params.get("sids").filter(|v| !v.is_null()),
    ) {
        (Some(sid), None) => sid.as_u64().ok_or(err(ErrorCode::InvalidParameter))?,
        (None, Some(sids)) => match u64_list(sids, MAX_SIDS_PER_COMMAND).as_deref() {
            Some([sid]) => *sid,
            Some(_) => return Err(err(ErrorCode::ExactlyOneSid)),
            None => return Err(err(ErrorCode::InvalidParameter)),
        },
        _ => return Err(err(ErrorCode::ExactlyOneSid)),
    };
    let action = match params.get("action") {
        None | Some(Value::Null) => return Err(err(ErrorCode::ActionRequired)),
        Some(Value::String(a)) => match a.as_str() {
            "add_markets" => UpdateAction::AddMarkets,
            "delete_markets" => UpdateAction::DeleteMarkets,
            "get_snapshot" => UpdateAction::GetSnapshot,
            _ => return Err(err(ErrorCode::UnsupportedAction)),
        },
        Some(_) => return Err(err(ErrorCode::InvalidParameter)),
    };
    let markets = markets(id, params)?
        .filter(|m| !m.is_empty())
        .ok_or(err(ErrorCode::MarketTickerRequired))?;
    Ok(UpdateSubscription {
        sid,
        markets,
        action,
    })
}

/// Reply frames, as the reference shows them. An `id` of 0 is left out.
pub mod reply {
    use super::ErrorCode;
    use serde_json::{json, Map, Value};

    fn frame(
        id: u64,
        kind: &str,
        sid: Option<u64>,
        seq: Option<u64>,
        msg: Option<Value>,
    ) -> String {
        let mut obj = Map::new();
        if id != 0 {
            obj.insert("id".into(), json!(id));
        }
        obj.insert("type".into(), json!(kind));
        if let Some(sid) = sid {
            obj.insert("sid".into(), json!(sid));
        }
        if let Some(seq) = seq {
            obj.insert("seq".into(), json!(seq));
        }
        if let Some(msg) = msg {
            obj.insert("msg".into(), msg);
        }
        Value::Object(obj).to_string()
    }

    /// `{"id":1,"type":"subscribed","msg":{"channel":"orderbook_delta","sid":1}}`
    pub fn subscribed(id: u64, channel: &str, sid: u64) -> String {
        frame(
            id,
            "subscribed",
            None,
            None,
            Some(json!({ "channel": channel, "sid": sid })),
        )
    }

    /// `{"id":3,"type":"unsubscribed","sid":2,"seq":7}`: `seq` is the sid's last seq. The newest
    /// spec requires it on every `unsubscribed`, and a seq is at least 1, so a sid that has no
    /// sequence or has sent nothing says 1.
    pub fn unsubscribed(id: u64, sid: u64, seq: Option<u64>) -> String {
        frame(
            id,
            "unsubscribed",
            Some(sid),
            Some(seq.unwrap_or(0).max(1)),
            None,
        )
    }

    /// `{"id":4,"type":"ok","sid":1,"seq":222,"msg":{"market_tickers":[...]}}` after an update:
    /// the sid's markets after it, or no `msg` for a sid subscribed with `skip_ticker_ack`. `seq`
    /// (the sid's last) is left out before the first, since a seq is at least 1.
    pub fn ok_markets(id: u64, sid: u64, seq: Option<u64>, markets: Option<&[String]>) -> String {
        frame(
            id,
            "ok",
            Some(sid),
            seq.filter(|s| *s >= 1),
            markets.map(|m| json!({ "market_tickers": m })),
        )
    }

    /// `{"id":7,"type":"ok","msg":[{"channel":"orderbook_delta","sid":1},...]}`
    pub fn ok_list(id: u64, subscriptions: &[(String, u64)]) -> String {
        let list: Vec<Value> = subscriptions
            .iter()
            .map(|(c, sid)| json!({ "channel": c, "sid": sid }))
            .collect();
        frame(id, "ok", None, None, Some(Value::Array(list)))
    }

    /// A plain `ok` with an arbitrary body (or none).
    pub fn ok(id: u64, msg: Option<Value>) -> String {
        frame(id, "ok", None, None, msg)
    }

    /// `{"id":9,"type":"error","msg":{"code":16,"msg":"Market not found","market_ticker":"X"}}`
    pub fn error(id: u64, code: ErrorCode, market_ticker: Option<&str>) -> String {
        let mut msg = json!({ "code": code.code(), "msg": code.message() });
        if let Some(t) = market_ticker {
            msg["market_ticker"] = json!(t);
        }
        frame(id, "error", None, None, Some(msg))
    }

    /// Relay extension: `{"id":N,"type":"pong"}`.
    pub fn pong(id: u64) -> String {
        frame(id, "pong", None, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(frame: &str) -> ErrorCode {
        Command::parse(frame.as_bytes()).unwrap_err().code
    }

    #[test]
    fn reference_commands_parse() {
        let c = Command::parse(br#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta","trade"],"market_tickers":["A-1","B-2"]}}"#).unwrap();
        assert_eq!(
            c,
            Command {
                id: 1,
                action: Action::Subscribe(Subscribe {
                    channels: vec![Channel::OrderbookDelta, Channel::Trade],
                    markets: Some(vec!["A-1".into(), "B-2".into()]),
                    send_initial_snapshot: false,
                    skip_ticker_ack: false,
                    use_yes_price: None,
                    resume_from: None,
                })
            }
        );
        let c = Command::parse(br#"{"id":2,"cmd":"subscribe","params":{"channels":["ticker"],"market_ticker":"A-1","send_initial_snapshot":true}}"#).unwrap();
        let Action::Subscribe(s) = c.action else {
            panic!()
        };
        assert_eq!(s.markets, Some(vec!["A-1".to_owned()]));
        assert!(s.send_initial_snapshot);
        assert_eq!(
            Command::parse(br#"{"id":3,"cmd":"unsubscribe","params":{"sids":[1,2]}}"#)
                .unwrap()
                .action,
            Action::Unsubscribe { sids: vec![1, 2] }
        );
        for (frame, action) in [
            (
                r#"{"id":4,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["C-3"],"action":"add_markets"}}"#,
                UpdateAction::AddMarkets,
            ),
            (
                r#"{"id":5,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["A-1"],"action":"delete_markets"}}"#,
                UpdateAction::DeleteMarkets,
            ),
            (
                r#"{"id":6,"cmd":"update_subscription","params":{"sids":[1],"market_tickers":["A-1"],"action":"get_snapshot"}}"#,
                UpdateAction::GetSnapshot,
            ),
        ] {
            let Action::UpdateSubscription(u) = Command::parse(frame.as_bytes()).unwrap().action
            else {
                panic!()
            };
            assert_eq!((u.sid, u.action), (1, action));
        }
        assert_eq!(
            Command::parse(br#"{"id":7,"cmd":"list_subscriptions"}"#)
                .unwrap()
                .action,
            Action::ListSubscriptions
        );
    }

    #[test]
    fn bad_commands_get_the_reference_codes() {
        assert_eq!(code_of("not json"), ErrorCode::UnableToProcess);
        assert_eq!(code_of("[1,2]"), ErrorCode::UnableToProcess);
        assert_eq!(
            code_of(r#"{"id":1,"cmd":"subscribe"}"#),
            ErrorCode::ParamsRequired
        );
        assert_eq!(
            code_of(r#"{"id":1,"cmd":"subscribe","params":{}}"#),
            ErrorCode::ChannelsRequired
        );
        assert_eq!(
            code_of(r#"{"id":1,"cmd":"subscribe","params":{"channels":[]}}"#),
            ErrorCode::ChannelsRequired
        );
        assert_eq!(
            code_of(r#"{"id":1,"cmd":"unsubscribe","params":{}}"#),
            ErrorCode::SidsRequired
        );
        assert_eq!(
            code_of(r#"{"id":1,"cmd":"dance"}"#),
            ErrorCode::UnknownCommand
        );
        assert_eq!(
            code_of(r#"{"id":1,"cmd":"subscribe","params":{"channels":["nope"]}}"#),
            ErrorCode::UnknownChannel
        );
        assert_eq!(
            code_of(
                r#"{"id":1,"cmd":"subscribe","params":{"channels":["ticker"],"market_ticker":"A","market_tickers":["B"]}}"#
            ),
            ErrorCode::InvalidParameter
        );
        assert_eq!(
            code_of(
                r#"{"id":1,"cmd":"update_subscription","params":{"sids":[1,2],"market_tickers":["A"],"action":"add_markets"}}"#
            ),
            ErrorCode::ExactlyOneSid
        );
        assert_eq!(
            code_of(
                r#"{"id":1,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["A"],"action":"dance"}}"#
            ),
            ErrorCode::UnsupportedAction
        );
        assert_eq!(
            code_of(r#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta"]}}"#),
            ErrorCode::MarketTickerRequired
        );
        assert_eq!(
            code_of(
                r#"{"id":1,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["A"]}}"#
            ),
            ErrorCode::ActionRequired
        );
        let many: Vec<String> = (0..=MAX_MARKETS_PER_COMMAND)
            .map(|i| format!("M{i}"))
            .collect();
        let frame = serde_json::json!({"id":1,"cmd":"subscribe","params":{"channels":["trade"],"market_tickers":many}});
        assert_eq!(code_of(&frame.to_string()), ErrorCode::InvalidParameter);
        let sids: Vec<u64> = (0..=MAX_SIDS_PER_COMMAND as u64).collect();
        let frame = serde_json::json!({"id":1,"cmd":"unsubscribe","params":{"sids":sids}});
        assert_eq!(code_of(&frame.to_string()), ErrorCode::InvalidParameter);
        let e = Command::parse(br#"{"id":9,"cmd":"dance"}"#).unwrap_err();
        assert_eq!(
            e.reply(),
            r#"{"id":9,"type":"error","msg":{"code":5,"msg":"Unknown command"}}"#
        );
    }

    #[test]
    fn repeated_markets_and_sids_count_once() {
        let c = Command::parse(br#"{"id":1,"cmd":"subscribe","params":{"channels":["trade","trade"],"market_tickers":["A","B","A","A"]}}"#).unwrap();
        let Action::Subscribe(s) = c.action else {
            panic!()
        };
        assert_eq!(
            (s.channels, s.markets),
            (vec![Channel::Trade], Some(vec!["A".into(), "B".into()]))
        );
        let c =
            Command::parse(br#"{"id":2,"cmd":"unsubscribe","params":{"sids":[3,3,1,3]}}"#).unwrap();
        assert_eq!(c.action, Action::Unsubscribe { sids: vec![3, 1] });
    }

    #[test]
    fn commands_encode_to_what_they_parse_from() {
        for frame in [
            r#"{"id":1,"cmd":"subscribe","params":{"channels":["orderbook_delta","trade"],"market_tickers":["A-1","B-2"],"use_yes_price":false}}"#,
            r#"{"id":3,"cmd":"unsubscribe","params":{"sids":[1,2]}}"#,
            r#"{"id":4,"cmd":"update_subscription","params":{"sid":1,"market_tickers":["C-3"],"action":"add_markets"}}"#,
            r#"{"id":7,"cmd":"list_subscriptions"}"#,
        ] {
            let c = Command::parse(frame.as_bytes()).unwrap();
            assert_eq!(Command::parse(c.to_json().as_bytes()).unwrap(), c);
        }
    }
}
