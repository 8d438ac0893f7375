//! Deliberate breakages, to show that the tests catch them (RELIABILITY.md, "What the tests are
//! shown to catch"; `.ci/breakages`).
//!
//! Only a build with the `fault-injection` feature reads `RELAY_TEST_BREAK` (once, at first use);
//! in every other build [`is`] is a constant `false` and the hooks compile away.

/// One deliberate breakage, named as `RELAY_TEST_BREAK` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breakage {
    /// `refuse_upgrades`: every WebSocket upgrade is answered 503.
    RefuseUpgrades,
    /// `drop_deltas`: one book delta in a thousand is not published.
    DropDeltas,
    /// `no_resnapshot`: once a book went stale (a gap, a lost connection), its snapshots are never
    /// published again.
    NoResnapshot,
    /// `skip_fill`: the relay's 20th fill is not published.
    SkipFill,
    /// `leak`: every upgrade leaks 256 KiB of touched heap.
    Leak,
    /// `no_backfill`: the upstream runs with `backfill = false`, so outages close private
    /// subscribers instead of being recovered.
    NoBackfill,
}

impl Breakage {
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub fn parse(name: &str) -> Option<Breakage> {
        Some(match name {
            "refuse_upgrades" => Breakage::RefuseUpgrades,
            "drop_deltas" => Breakage::DropDeltas,
            "no_resnapshot" => Breakage::NoResnapshot,
            "skip_fill" => Breakage::SkipFill,
            "leak" => Breakage::Leak,
            "no_backfill" => Breakage::NoBackfill,
            _ => return None,
        })
    }
}

/// Whether `b` is the breakage this process was started with.
#[cfg(feature = "fault-injection")]
pub fn is(b: Breakage) -> bool {
    static ACTIVE: std::sync::OnceLock<Option<Breakage>> = std::sync::OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let name = std::env::var("RELAY_TEST_BREAK").ok()?;
        let b = Breakage::parse(&name);
        eprintln!("RELAY_TEST_BREAK={name}: deliberately broken build ({b:?})");
        b
    }) == Some(b)
}

/// Whether `b` is the breakage this process was started with: never, in this build.
#[cfg(not(feature = "fault-injection"))]
pub const fn is(_: Breakage) -> bool {
    false
}

/// Counts calls and says true on every `every`-th, or on the `nth` only (`once`).
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) struct Every {
    seen: std::sync::atomic::AtomicU64,
}

#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
impl Every {
    pub(crate) const fn new() -> Every {
        Every {
            seen: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn every(&self, every: u64) -> bool {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        n % every == 0
    }

    pub(crate) fn nth(&self, nth: u64) -> bool {
        self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == nth
    }
}
