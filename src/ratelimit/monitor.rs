//! The rate-limit monitor actor: probes Redis at start and, while the limiter is on its
//! in-process fallback, every tick (so that it hands back as soon as Redis answers), and
//! sweeps idle in-process buckets every 20 ticks.
//!
//! Messages: [`MonitorMsg::Tick`] (scheduled). Failure behaviour: a probe that fails keeps
//! the fallback; the actor itself does not fail on it. A restart probes again at once.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::RateLimiter;

/// Time between ticks.
pub const MONITOR_INTERVAL: Duration = Duration::from_millis(500);

/// Ticks between sweeps of idle in-process buckets.
const SWEEP_EVERY: u32 = 20;

/// The monitor actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimitMonitor;

/// What it watches.
#[derive(Clone)]
pub struct MonitorArgs {
    /// The limiter of the public API.
    pub limiter: Arc<RateLimiter>,
    /// Time between ticks.
    pub interval: Duration,
}

/// Messages the monitor handles.
#[derive(Debug)]
pub enum MonitorMsg {
    /// Probe Redis if the limiter is degraded; sweep now and then.
    Tick,
}

/// The monitor's state.
pub struct MonitorState {
    limiter: Arc<RateLimiter>,
    ticks: u32,
}

impl Actor for RateLimitMonitor {
    type Msg = MonitorMsg;
    type State = MonitorState;
    type Arguments = MonitorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MonitorMsg>,
        args: MonitorArgs,
    ) -> Result<MonitorState, ActorProcessingErr> {
        myself.send_interval(args.interval, || MonitorMsg::Tick);
        Ok(MonitorState {
            limiter: args.limiter,
            ticks: 0,
        })
    }

    async fn post_start(
        &self,
        _: ActorRef<MonitorMsg>,
        state: &mut MonitorState,
    ) -> Result<(), ActorProcessingErr> {
        // Whether Redis answers now, rather than at the first request that finds out.
        state.limiter.probe().await;
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<MonitorMsg>,
        MonitorMsg::Tick: MonitorMsg,
        state: &mut MonitorState,
    ) -> Result<(), ActorProcessingErr> {
        if state.limiter.is_degraded() {
            state.limiter.probe().await;
        }
        state.ticks = state.ticks.wrapping_add(1);
        if state.ticks.is_multiple_of(SWEEP_EVERY) {
            state.limiter.local.sweep();
        }
        Ok(())
    }
}
