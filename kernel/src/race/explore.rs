//! Explore mode: every ordering of a row's race points and synchronisation
//! events, run on the hardware, one schedule per iteration.
//!
//! Every point a row declares (its schedule's, delay and trace points), every
//! synchronisation event of [`points::SYNC`] (a lock taken or released, a
//! page reference got or put, a flush issued, a page or table freed) and the
//! start and end of each role's operation ([`points::ROLE_START`],
//! [`points::ROLE_END`]) is a scheduling point: a role that reaches one
//! parks there, with its interrupt state kept ([`point::explore_parked`]).
//! Page events (lock, reference, free) are scheduling points only on the
//! frames the row's detectors watch ([`Ctx::pfns`](super::scenario::Ctx),
//! [`point::explore_watch`]); on any other frame they are traced only.
//! When every role is parked (or done), the controller makes a decision: it
//! grants one parked role its next step ([`point::explore_grant`]); that
//! role runs alone until its next scheduling point or its end. The code
//! between two points therefore runs serialised, in the order the decisions
//! chose (as CHESS schedules at synchronisation, Musuvathi et al., OSDI
//! 2008).
//!
//! The [`Explorer`] enumerates decision sequences depth-first and stateless:
//! each schedule is one iteration from the row's fresh state; it replays the
//! prefix it backtracked to and extends it with the default decision
//! (the running role goes on while it can: no preemption). A decision that
//! grants another role while the previous one could go on is a preemption;
//! with a bound `K` ([`Explorer::new`]) no schedule has more than `K`.
//!
//! An ordering the hardware refuses shows as a granted role that does not
//! reach its next point because it waits for a parked one (a flush IPI the
//! parked role holds back with interrupts off, a PTL it holds, a grace period
//! it delays): the prover reads that wait-for cycle from live state, the
//! schedule is pruned with the cycle as its proof and the exploration goes
//! on. A stall without such a cycle is a `hang`, a failure.
//!
//! Invariants: decisions are made only while no role runs; a replayed
//! prefix must meet the same parked roles at each decision (else the
//! schedule counts as divergent and is extended from where it diverged).

use super::point::{self, RacePoint, Step};
use alloc::{string::String, vec::Vec};

/// One decision of a schedule.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The parked roles (in role order) and where each is parked.
    pub enabled: Vec<(usize, &'static RacePoint)>,
    /// The role granted.
    pub chosen: usize,
    /// The role granted at the decision before (it is the one that ran).
    pub prev: Option<usize>,
    /// Roles tried at this decision (bit per role), the chosen one included.
    tried: u32,
}

impl Decision {
    /// Whether granting `role` here preempts the role that ran before.
    fn preempts(&self, role: usize) -> bool {
        self.prev
            .is_some_and(|p| p != role && self.enabled.iter().any(|&(r, _)| r == p))
    }
}

/// The depth-first, stateless enumeration of decision sequences.
#[derive(Debug)]
pub struct Explorer {
    /// The preemption bound (`None`: unbounded).
    pub bound: Option<u32>,
    /// The decisions of the schedule being run (a prefix to replay, then
    /// the ones this schedule made).
    path: Vec<Decision>,
    /// How many decisions of `path` the schedule being run replays.
    replay: usize,
    /// Decisions made in the schedule being run.
    pos: usize,
    /// No schedule is left within the bound.
    pub exhausted: bool,
    /// Some ordering was left out because of the bound.
    pub bound_cut: bool,
    /// Schedules whose replayed prefix met other parked roles than before.
    pub divergent: u64,
}

impl Explorer {
    /// An exploration with at most `bound` preemptions per schedule.
    pub fn new(bound: Option<u32>) -> Self {
        Explorer {
            bound,
            path: Vec::new(),
            replay: 0,
            pos: 0,
            exhausted: false,
            bound_cut: false,
            divergent: 0,
        }
    }

    /// Starts a schedule: the next decisions replay the prefix.
    pub fn begin(&mut self) {
        self.pos = 0;
    }

    /// The decision at a point where `enabled` (role, point) are parked, in
    /// role order, and `prev` ran last: the role to grant.
    pub fn choose(
        &mut self,
        enabled: &[(usize, &'static RacePoint)],
        prev: Option<usize>,
    ) -> usize {
        if self.pos < self.replay {
            let d = &self.path[self.pos];
            let same = d.enabled.len() == enabled.len()
                && d.enabled
                    .iter()
                    .zip(enabled)
                    .all(|(a, b)| a.0 == b.0 && core::ptr::eq(a.1, b.1));
            if same {
                self.pos += 1;
                return d.chosen;
            }
            self.divergent += 1;
            self.path.truncate(self.pos);
            self.replay = self.pos;
        }
        let chosen = match prev {
            Some(p) if enabled.iter().any(|&(r, _)| r == p) => p,
            _ => enabled[0].0,
        };
        self.path.truncate(self.pos);
        self.path.push(Decision {
            enabled: enabled.to_vec(),
            chosen,
            prev,
            tried: 1 << chosen,
        });
        self.pos += 1;
        chosen
    }

    /// The decisions the schedule just run made.
    pub fn decisions(&self) -> &[Decision] {
        &self.path[..self.pos.min(self.path.len())]
    }

    /// Preemptions in the schedule just run.
    pub fn preemptions(&self) -> u32 {
        self.decisions()
            .iter()
            .filter(|d| d.preempts(d.chosen))
            .count() as u32
    }

    /// Ends a schedule and picks the next one: the deepest decision with a
    /// role not tried yet within the bound gets it. Returns false when no
    /// schedule is left ([`Explorer::exhausted`]).
    pub fn advance(&mut self) -> bool {
        self.path.truncate(self.pos);
        while let Some(d) = self.path.pop() {
            let used = self.path.iter().filter(|d| d.preempts(d.chosen)).count() as u32;
            for &(r, _) in &d.enabled {
                if d.tried & (1 << r) != 0 {
                    continue;
                }
                if self
                    .bound
                    .is_some_and(|b| used + u32::from(d.preempts(r)) > b)
                {
                    self.bound_cut = true;
                    continue;
                }
                self.path.push(Decision {
                    chosen: r,
                    tried: d.tried | 1 << r,
                    ..d.clone()
                });
                self.replay = self.path.len();
                return true;
            }
        }
        self.replay = 0;
        self.exhausted = true;
        false
    }
}

/// The forced schedule that replays `decisions` exactly: each role reaches
/// [`points::ROLE_START`](point::points::ROLE_START) first, then for each
/// decision the granted role leaves the point it is parked at and reaches
/// the point it parks at next (the point of its next decision), so the code
/// between two points runs serialised as explore ran it.
pub fn replay_steps(roles: usize, decisions: &[Decision]) -> Vec<Step> {
    let mut steps: Vec<Step> = (0..roles)
        .map(|r| Step::at(r, &point::points::ROLE_START))
        .collect();
    for (k, d) in decisions.iter().enumerate() {
        let Some(&(_, at)) = d.enabled.iter().find(|(r, _)| *r == d.chosen) else {
            continue;
        };
        steps.push(Step::leave(d.chosen, at));
        let next = decisions[k + 1..]
            .iter()
            .find_map(|n| n.enabled.iter().find(|(r, _)| *r == d.chosen));
        if let Some(&(_, to)) = next {
            steps.push(Step::at(d.chosen, to));
        }
    }
    steps
}

/// A schedule in its text form, `role@point` (the role reaches the point
/// and holds there until every earlier step is done) and `role~point` (it
/// leaves the point it holds at), comma-separated.
pub fn format_schedule(steps: &[Step], roles: &[&str]) -> String {
    let mut s = String::new();
    for (i, st) in steps.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(roles.get(st.role).copied().unwrap_or("?"));
        s.push(if st.leave { '~' } else { '@' });
        s.push_str(st.point.name);
    }
    s
}

/// Parses the text form of [`format_schedule`]; `point` finds a point by
/// name.
pub fn parse_schedule(
    text: &str,
    roles: &[&str],
    point: impl Fn(&str) -> Option<&'static RacePoint>,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for tok in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let at = tok
            .find(['@', '~'])
            .ok_or_else(|| alloc::format!("'{tok}': a step is role@point or role~point"))?;
        let (role, rest) = tok.split_at(at);
        let leave = rest.starts_with('~');
        let name = &rest[1..];
        let r = roles.iter().position(|x| *x == role).ok_or_else(|| {
            alloc::format!(
                "'{tok}': unknown role '{role}' (roles: {})",
                roles.join(", ")
            )
        })?;
        let p = point(name).ok_or_else(|| alloc::format!("'{tok}': unknown point '{name}'"))?;
        steps.push(if leave {
            Step::leave(r, p)
        } else {
            Step::at(r, p)
        });
    }
    if steps.is_empty() {
        return Err("an empty schedule".into());
    }
    if steps.len() > point::MAX_STEPS {
        return Err(alloc::format!(
            "{} steps, at most {}",
            steps.len(),
            point::MAX_STEPS
        ));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use point::points::{TEST_A, TEST_B, TEST_C};

    /// Runs the explorer over two roles with fixed programs: role 0 parks
    /// at `a` points, role 1 at `b`; returns every schedule as its decision
    /// roles.
    fn enumerate(a: usize, b: usize, bound: Option<u32>) -> (Vec<Vec<usize>>, Explorer) {
        let mut ex = Explorer::new(bound);
        let mut all = Vec::new();
        loop {
            ex.begin();
            let mut left = [a, b];
            let mut prev = None;
            let mut seq = Vec::new();
            loop {
                let enabled: Vec<(usize, &'static RacePoint)> = (0..2)
                    .filter(|&r| left[r] > 0)
                    .map(|r| (r, if r == 0 { &TEST_A } else { &TEST_B }))
                    .collect();
                if enabled.is_empty() {
                    break;
                }
                let r = ex.choose(&enabled, prev);
                left[r] -= 1;
                prev = Some(r);
                seq.push(r);
            }
            all.push(seq);
            if !ex.advance() {
                break;
            }
        }
        (all, ex)
    }

    #[test]
    fn unbounded_exploration_runs_every_interleaving_once() {
        // Two roles of 3 and 2 steps: C(5, 2) = 10 interleavings.
        let (all, ex) = enumerate(3, 2, None);
        assert_eq!(all.len(), 10);
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
        assert!(ex.exhausted && !ex.bound_cut);
        assert_eq!(all[0], [0, 0, 0, 1, 1], "the first schedule never preempts");
    }

    #[test]
    fn the_preemption_bound_cuts_and_says_so() {
        let (all, ex) = enumerate(3, 3, Some(0));
        // No preemption: one role runs to its end, then the other.
        assert_eq!(all, [vec![0, 0, 0, 1, 1, 1], vec![1, 1, 1, 0, 0, 0]]);
        assert!(ex.exhausted && ex.bound_cut);
        let (all1, _) = enumerate(3, 3, Some(1));
        let (full, _) = enumerate(3, 3, None);
        assert!(all.len() < all1.len() && all1.len() < full.len());
        assert_eq!(full.len(), 20);
    }

    #[test]
    fn schedules_round_trip_through_their_text() {
        let roles = ["gup", "unmap"];
        let steps = [
            Step::at(0, &TEST_A),
            Step::at(1, &TEST_B),
            Step::leave(0, &TEST_A),
            Step::at(0, &TEST_C),
        ];
        let text = format_schedule(&steps, &roles);
        assert_eq!(text, "gup@test:a,unmap@test:b,gup~test:a,gup@test:c");
        let back = parse_schedule(&text, &roles, point::points::by_name).unwrap();
        assert_eq!(format_schedule(&back, &roles), text);
        assert!(parse_schedule("gup@nowhere", &roles, point::points::by_name).is_err());
        assert!(parse_schedule("walker@test:a", &roles, point::points::by_name).is_err());
        assert!(parse_schedule("gup-test:a", &roles, point::points::by_name).is_err());
    }

    #[test]
    fn a_replay_serialises_what_explore_ran() {
        let d = |enabled: &[(usize, &'static RacePoint)], chosen, prev| Decision {
            enabled: enabled.to_vec(),
            chosen,
            prev,
            tried: 0,
        };
        let start = &point::points::ROLE_START;
        let decisions = [
            d(&[(0, start), (1, start)], 0, None),
            d(&[(0, &TEST_A), (1, start)], 1, Some(0)),
            d(&[(0, &TEST_A), (1, &TEST_B)], 0, Some(1)),
        ];
        let text = format_schedule(&replay_steps(2, &decisions), &["x", "y"]);
        assert_eq!(
            text,
            "x@role:start,y@role:start,x~role:start,x@test:a,y~role:start,y@test:b,x~test:a"
        );
    }
}
