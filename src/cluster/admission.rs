//! Which connection a waiting process lets run its handshake when there is
//! no room for all: the policy, as a decision; `connect.rs` does the I/O.
//!
//! A flood of connections must not keep a real peer out. So a newcomer is
//! never turned away while an unauthenticated connection could make room
//! for it: the one that has come least far (silent before one that sent a
//! hello), and the oldest of those, is dropped instead. A real peer sends
//! its hello at once and authenticates in one round trip, so it outlives
//! silent strangers, and a peer that keeps retrying is always let in. Each
//! address gets at most [`PER_SOURCE`] of the [`MAX_PENDING`] slots, so a
//! flood from one address only displaces its own connections.

use std::net::IpAddr;

/// The most handshakes in progress at once.
pub const MAX_PENDING: usize = 64;

/// The most handshakes in progress at once from one address.
pub const PER_SOURCE: usize = 16;

/// How far a handshake has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// Accepted; nothing received yet.
    Silent,
    /// It opened with the tidemill handshake and was challenged.
    Hello,
    /// It proved it holds the key; it is never dropped to make room.
    Authenticated,
}

/// A handshake in progress, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Where it comes from.
    pub source: IpAddr,
    /// How far it has come.
    pub stage: Stage,
}

/// What to do with a newcomer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start its handshake.
    Admit,
    /// Drop the pending handshake at this index, then start the newcomer's.
    Evict(usize, &'static str),
    /// Close the newcomer: every handshake it could replace has
    /// authenticated.
    Refuse(&'static str),
}

/// The decision for a newcomer from `source`, given the handshakes in
/// progress, oldest first.
pub(crate) fn decide(pending: &[Pending], source: IpAddr) -> Decision {
    let same = pending.iter().filter(|p| p.source == source).count();
    let (only_source, why) = if same >= PER_SOURCE {
        (
            true,
            "dropped to make room: the least advanced unauthenticated handshake from its address",
        )
    } else if pending.len() >= MAX_PENDING {
        (
            false,
            "dropped to make room: the least advanced unauthenticated handshake",
        )
    } else {
        return Decision::Admit;
    };
    let victim = pending
        .iter()
        .enumerate()
        .filter(|(_, p)| p.stage < Stage::Authenticated && (!only_source || p.source == source))
        // `min_by_key` keeps the first of equals: the oldest.
        .min_by_key(|(_, p)| p.stage);
    match victim {
        Some((i, _)) => Decision::Evict(i, why),
        None => {
            Decision::Refuse("closed on arrival: every handshake in progress has authenticated")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn pending(source: IpAddr, stage: Stage) -> Pending {
        Pending { source, stage }
    }

    #[test]
    fn newcomers_are_admitted_while_there_is_room() {
        let mut table = Vec::new();
        for _ in 0..PER_SOURCE {
            assert_eq!(decide(&table, ip(1)), Decision::Admit);
            table.push(pending(ip(1), Stage::Silent));
        }
        assert_eq!(decide(&table, ip(2)), Decision::Admit);
    }

    #[test]
    fn a_flood_from_one_address_displaces_only_its_own_oldest_silent_one() {
        let mut table = vec![pending(ip(2), Stage::Silent)];
        table.extend((0..PER_SOURCE).map(|i| {
            let stage = if i < 3 { Stage::Hello } else { Stage::Silent };
            pending(ip(1), stage)
        }));
        // Index 0 is another address's, 1..4 sent a hello: 4 is the oldest
        // silent one of ip(1).
        assert!(matches!(decide(&table, ip(1)), Decision::Evict(4, _)));
        assert_eq!(decide(&table, ip(3)), Decision::Admit);
    }

    #[test]
    fn when_all_slots_are_taken_the_least_advanced_oldest_one_goes() {
        let per = MAX_PENDING / PER_SOURCE;
        let table: Vec<Pending> = (0..MAX_PENDING)
            .map(|i| {
                let stage = if i == 5 || i == 9 {
                    Stage::Silent
                } else {
                    Stage::Hello
                };
                pending(ip((i % per) as u8), stage)
            })
            .collect();
        assert!(matches!(decide(&table, ip(200)), Decision::Evict(5, _)));
        let hellos: Vec<Pending> = table
            .iter()
            .map(|p| pending(p.source, Stage::Hello))
            .collect();
        assert!(matches!(decide(&hellos, ip(200)), Decision::Evict(0, _)));
    }

    #[test]
    fn authenticated_handshakes_are_never_dropped() {
        let table = vec![pending(ip(1), Stage::Authenticated); PER_SOURCE];
        assert!(matches!(decide(&table, ip(1)), Decision::Refuse(_)));
        let mut table = table;
        table.push(pending(ip(1), Stage::Hello));
        assert!(matches!(
            decide(&table, ip(1)),
            Decision::Evict(PER_SOURCE, _)
        ));
    }
}
