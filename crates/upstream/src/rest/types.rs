//! What the REST portfolio endpoints answer (reference §8.2-8.4). Required fields are plain,
//! optional or deprecated ones `Option`; prices and counts are the exact fixed-point types, money
//! amounts (up to six decimals) stay strings.

use protocol::{Count, Price};
use serde::Deserialize;

/// One fill (`GET /portfolio/fills`). `trade_id` is the WebSocket `fill.trade_id` (§8.6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fill {
    /// `fill_id` (or its legacy twin `trade_id`).
    pub trade_id: String,
    pub order_id: String,
    /// `ticker` (or its legacy twin `market_ticker`).
    pub ticker: String,
    pub outcome_side: Option<String>,
    pub book_side: Option<String>,
    pub side: Option<String>,
    pub action: Option<String>,
    pub count_fp: Count,
    pub yes_price_dollars: Price,
    pub no_price_dollars: Price,
    pub fee_cost: String,
    pub is_taker: bool,
    /// RFC3339, whole seconds.
    pub created_time: Option<String>,
    /// Unix seconds (legacy).
    pub ts: Option<i64>,
    pub exchange_index: Option<i64>,
    pub subaccount_number: Option<i64>,
}

/// The wire form, with both names of the twin fields.
#[derive(Deserialize)]
pub(crate) struct RawFill {
    fill_id: Option<String>,
    trade_id: Option<String>,
    order_id: String,
    ticker: Option<String>,
    market_ticker: Option<String>,
    outcome_side: Option<String>,
    book_side: Option<String>,
    side: Option<String>,
    action: Option<String>,
    count_fp: Count,
    yes_price_dollars: Price,
    no_price_dollars: Price,
    fee_cost: String,
    is_taker: bool,
    created_time: Option<String>,
    ts: Option<i64>,
    exchange_index: Option<i64>,
    subaccount_number: Option<i64>,
}

impl TryFrom<RawFill> for Fill {
    type Error = &'static str;

    fn try_from(r: RawFill) -> Result<Fill, &'static str> {
        Ok(Fill {
            trade_id: r.fill_id.or(r.trade_id).ok_or("a fill without fill_id")?,
            order_id: r.order_id,
            ticker: r
                .ticker
                .or(r.market_ticker)
                .ok_or("a fill without ticker")?,
            outcome_side: r.outcome_side,
            book_side: r.book_side,
            side: r.side,
            action: r.action,
            count_fp: r.count_fp,
            yes_price_dollars: r.yes_price_dollars,
            no_price_dollars: r.no_price_dollars,
            fee_cost: r.fee_cost,
            is_taker: r.is_taker,
            created_time: r.created_time,
            ts: r.ts,
            exchange_index: r.exchange_index,
            subaccount_number: r.subaccount_number,
        })
    }
}

/// One order (`GET /portfolio/orders`), its latest state.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub user_id: Option<String>,
    pub client_order_id: Option<String>,
    pub ticker: String,
    #[serde(rename = "type")]
    pub order_type: Option<String>,
    /// `resting`, `canceled` or `executed`.
    pub status: String,
    pub outcome_side: Option<String>,
    pub book_side: Option<String>,
    pub side: Option<String>,
    pub action: Option<String>,
    pub yes_price_dollars: Price,
    pub no_price_dollars: Option<Price>,
    pub fill_count_fp: Count,
    pub remaining_count_fp: Count,
    pub initial_count_fp: Option<Count>,
    pub taker_fill_cost_dollars: Option<String>,
    pub maker_fill_cost_dollars: Option<String>,
    pub taker_fees_dollars: Option<String>,
    pub maker_fees_dollars: Option<String>,
    pub created_time: Option<String>,
    pub last_update_time: Option<String>,
    pub expiration_time: Option<String>,
    pub order_group_id: Option<String>,
    pub self_trade_prevention_type: Option<String>,
    pub subaccount_number: Option<i64>,
    pub exchange_index: Option<i64>,
}

/// The account's holding in one market (`market_positions` of `GET /portfolio/positions`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct MarketPosition {
    pub ticker: String,
    /// Positive: YES contracts; negative: NO.
    pub position_fp: Count,
    pub market_exposure_dollars: String,
    pub total_traded_dollars: String,
    pub realized_pnl_dollars: String,
    pub fees_paid_dollars: String,
    /// RFC3339 despite the name.
    pub last_updated_ts: Option<String>,
    pub exchange_index: Option<i64>,
}

/// The account's holding in one event (`event_positions`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct EventPosition {
    pub event_ticker: String,
    pub total_cost_dollars: String,
    pub total_cost_shares_fp: Count,
    pub event_exposure_dollars: String,
    pub realized_pnl_dollars: String,
    pub fees_paid_dollars: String,
}

/// Every page of `GET /portfolio/positions`, concatenated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions {
    pub market_positions: Vec<MarketPosition>,
    pub event_positions: Vec<EventPosition>,
}

/// One page of a list; an empty or absent cursor means the last.
pub(crate) trait Page: serde::de::DeserializeOwned {
    fn cursor(&self) -> Option<&str>;
}

#[derive(Deserialize)]
pub(crate) struct FillsPage {
    pub fills: Vec<RawFill>,
    pub cursor: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct OrdersPage {
    pub orders: Vec<Order>,
    pub cursor: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct PositionsPage {
    pub market_positions: Vec<MarketPosition>,
    pub event_positions: Vec<EventPosition>,
    pub cursor: Option<String>,
}

impl Page for FillsPage {
    fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }
}
impl Page for OrdersPage {
    fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }
}
impl Page for PositionsPage {
    fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }
}

/// Filters of [`RestClient::fills`]; `min_ts`/`max_ts` in Unix seconds, inclusive.
#[derive(Clone, Debug, Default)]
pub struct FillQuery {
    pub ticker: Option<String>,
    pub order_id: Option<String>,
    pub min_ts: Option<i64>,
    pub max_ts: Option<i64>,
}

/// Filters of [`RestClient::orders`].
#[derive(Clone, Debug, Default)]
pub struct OrderQuery {
    pub ticker: Option<String>,
    pub event_ticker: Option<String>,
    /// `resting`, `canceled` or `executed`.
    pub status: Option<String>,
    pub min_ts: Option<i64>,
    pub max_ts: Option<i64>,
}

/// Filters of [`RestClient::positions`].
#[derive(Clone, Debug, Default)]
pub struct PositionQuery {
    pub ticker: Option<String>,
    pub event_ticker: Option<String>,
    /// `position`, `total_traded` or both (comma-separated).
    pub count_filter: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_examples_decode() {
        let page: FillsPage = serde_json::from_str(r#"{"fills":[{"fill_id":"d91bc706-ee49-470d-82d8-11418bda6fed","order_id":"ee587a1c-8b87-4dcf-b721-9f6f790619fa","ticker":"HIGHNY-22DEC23-B53.5","outcome_side":"yes","book_side":"bid","count_fp":"278.00","yes_price_dollars":"0.7500","no_price_dollars":"0.2500","is_taker":true,"fee_cost":"0.010000","created_time":"2022-12-24T16:29:57Z"}],"cursor":""}"#).unwrap();
        let fill = Fill::try_from(page.fills.into_iter().next().unwrap()).unwrap();
        assert_eq!(fill.trade_id, "d91bc706-ee49-470d-82d8-11418bda6fed");
        assert_eq!(fill.count_fp, Count::from_whole(278));
        let page: PositionsPage = serde_json::from_str(r#"{"market_positions":[{"ticker":"FED-23DEC-T3.00","exchange_index":0,"total_traded_dollars":"50.0000","position_fp":"100.00","market_exposure_dollars":"50.0000","realized_pnl_dollars":"10.0000","fees_paid_dollars":"1.0000","last_updated_ts":"2026-05-31T23:34:49.912729Z"}],"event_positions":[],"cursor":""}"#).unwrap();
        assert_eq!(page.market_positions[0].position_fp, Count::from_whole(100));
        let order: Order = serde_json::from_str(r#"{"order_id":"o","user_id":"u","client_order_id":"c","ticker":"T","yes_price_dollars":"0.5600","no_price_dollars":"0.4400","fill_count_fp":"10.00","remaining_count_fp":"10.00","status":"resting","type":"limit"}"#).unwrap();
        assert_eq!(order.order_type.as_deref(), Some("limit"));
    }
}
