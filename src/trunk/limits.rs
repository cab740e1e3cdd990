//! Admission limits: concurrent calls and new calls per second, per trunk and for the whole
//! box. The B2BUA asks before it creates a call or sends one to a trunk, and tells when a call
//! stops occupying a trunk.

use std::time::{Duration, Instant};

use crate::config::Config;

/// A token bucket refilled at `rate` per second, holding at most one second's worth (at least
/// one call): a steady rate with a burst no bigger than one second of it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket for `rate` calls per second.
    pub fn new(rate: f64) -> Self {
        TokenBucket {
            rate,
            tokens: rate.max(1.0),
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.rate).min(self.rate.max(1.0));
        }
        self.last = Some(now);
    }

    /// Whether a call may start now (without taking it).
    pub fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes one call's token (after [`Self::ready`] said yes).
    pub fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The box or the trunk is at its concurrent-call limit.
    Calls,
    /// The box or the trunk is at its calls-per-second limit.
    Rate,
    /// The trunk is being drained.
    Draining,
}

impl Refusal {
    /// How long a caller should wait before retrying (`Retry-After` of the 503).
    pub fn retry_after(self) -> Duration {
        match self {
            Refusal::Rate => Duration::from_secs(1),
            Refusal::Calls | Refusal::Draining => Duration::from_secs(5),
        }
    }
}

/// Occupancy and rate state of every trunk and of the box.
#[derive(Debug)]
pub struct Limits {
    max_calls: usize,
    global_rate: Option<TokenBucket>,
    trunk_max: Vec<Option<usize>>,
    trunk_rate: Vec<Option<TokenBucket>>,
    active: Vec<usize>,
    draining: Vec<bool>,
}

impl Limits {
    /// No calls yet, every bucket full, no trunk draining.
    pub fn new(config: &Config) -> Self {
        Limits {
            max_calls: config.sip.max_calls,
            global_rate: config.sip.max_cps.map(TokenBucket::new),
            trunk_max: config.trunks.iter().map(|t| t.max_calls).collect(),
            trunk_rate: config
                .trunks
                .iter()
                .map(|t| t.max_cps.map(TokenBucket::new))
                .collect(),
            active: vec![0; config.trunks.len()],
            draining: vec![false; config.trunks.len()],
        }
    }

    /// Takes new limits from a reloaded `config` (trunks in their slots, `config::live`): calls
    /// occupying each trunk and drains carry over; a rate bucket is kept while its rate is
    /// unchanged and starts full when the rate changed; slots beyond the running ones start
    /// empty and not draining.
    pub fn reconfigure(&mut self, config: &Config) {
        let bucket = |old: Option<TokenBucket>, rate: Option<f64>| match (old, rate) {
            (Some(b), Some(r)) if b.rate == r => Some(b),
            (_, r) => r.map(TokenBucket::new),
        };
        self.max_calls = config.sip.max_calls;
        self.global_rate = bucket(self.global_rate.take(), config.sip.max_cps);
        self.trunk_max = config.trunks.iter().map(|t| t.max_calls).collect();
        let mut old_rates = std::mem::take(&mut self.trunk_rate).into_iter();
        self.trunk_rate = config
            .trunks
            .iter()
            .map(|t| bucket(old_rates.next().flatten(), t.max_cps))
            .collect();
        self.active.resize(config.trunks.len(), 0);
        self.draining.resize(config.trunks.len(), false);
    }

    /// Slot `t` holds a trunk a reload added (its slot's previous trunk has no call left): not
    /// draining, its rate bucket full.
    pub fn start_trunk(&mut self, t: usize, config: &Config) {
        self.draining[t] = false;
        self.trunk_rate[t] = config.trunks[t].max_cps.map(TokenBucket::new);
    }

    /// Admits a new call arriving from trunk `t` while `active` calls are up in all: checks the
    /// box's and the trunk's limits and, when admitted, takes the box's token (the trunk's is
    /// taken by [`Self::occupy`]).
    pub fn admit_new(&mut self, t: usize, active: usize, now: Instant) -> Result<(), Refusal> {
        if active >= self.max_calls {
            return Err(Refusal::Calls);
        }
        if self.global_rate.as_mut().is_some_and(|b| !b.ready(now)) {
            return Err(Refusal::Rate);
        }
        self.trunk_limits(t, now)?;
        if let Some(b) = &mut self.global_rate {
            b.take();
        }
        Ok(())
    }

    /// Whether trunk `t` is under its concurrent-call and rate limits now.
    fn trunk_limits(&mut self, t: usize, now: Instant) -> Result<(), Refusal> {
        if self.trunk_max[t].is_some_and(|max| self.active[t] >= max) {
            return Err(Refusal::Calls);
        }
        if self.trunk_rate[t].as_mut().is_some_and(|b| !b.ready(now)) {
            return Err(Refusal::Rate);
        }
        Ok(())
    }

    /// Whether calls may be sent to trunk `t`: not draining (draining stops calls *to* a trunk;
    /// calls from it are still taken), under its limits.
    pub fn outbound_available(&mut self, t: usize, now: Instant) -> Result<(), Refusal> {
        if self.draining[t] {
            return Err(Refusal::Draining);
        }
        self.trunk_limits(t, now)
    }

    /// A call now occupies trunk `t`: counts it and takes the trunk's rate token.
    pub fn occupy(&mut self, t: usize) {
        self.active[t] += 1;
        if let Some(b) = &mut self.trunk_rate[t] {
            b.take();
        }
    }

    /// A call stopped occupying trunk `t`.
    pub fn vacate(&mut self, t: usize) {
        self.active[t] = self.active[t].saturating_sub(1);
    }

    /// Calls occupying trunk `t`.
    pub fn active(&self, t: usize) -> usize {
        self.active[t]
    }

    /// Starts or stops draining trunk `t`: no new calls are sent to it; calls up continue.
    pub fn set_draining(&mut self, t: usize, on: bool) {
        self.draining[t] = on;
    }

    /// Whether trunk `t` is draining.
    pub fn draining(&self, t: usize) -> bool {
        self.draining[t]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_rate_with_a_one_second_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0);
        let mut admitted = 0;
        // 100 attempts in one second, evenly: the burst of 10 plus 10 refilled.
        for i in 0..100 {
            let now = t0 + Duration::from_millis(10 * i);
            if b.ready(now) {
                b.take();
                admitted += 1;
            }
        }
        assert!((19..=20).contains(&admitted), "{admitted}");
        let mut slow = TokenBucket::new(0.5);
        assert!(slow.ready(t0));
        slow.take();
        assert!(!slow.ready(t0 + Duration::from_secs(1)));
        assert!(slow.ready(t0 + Duration::from_secs(2)));
    }
}
