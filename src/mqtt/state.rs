//! The pure delivery state of the MQTT publisher, as rumqttc's `state.rs`
//! beside its event loop: which transition events the broker has not
//! acknowledged yet, and which packet id carries which event.
//!
//! The publisher feeds it what rumqttc reports (a publish handed over, its
//! packet id, a collision, a PUBACK, a lost connection) and reads back what
//! to resend and how far everything was acknowledged. It holds at most the
//! publisher's window of events (the rest stay in history and are read as
//! room appears), so its memory does not grow with an outage. It touches
//! no network, no clock and no channel; the tests drive it with reports
//! alone.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// One message waiting to be handed to rumqttc.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    /// The full topic.
    pub(super) topic: String,
    /// The payload.
    pub(super) payload: bytes::Bytes,
    /// Publish as retained.
    pub(super) retain: bool,
    /// The event seq, for events (tracked until acknowledged).
    pub(super) seq: Option<u64>,
}

/// Unacknowledged events and the bookkeeping that maps packet ids to them.
///
/// rumqttc reports `Outgoing::Publish(pkid)` in the order requests were
/// handed to it, so a FIFO of "handed over, pkid unknown" entries gives each
/// packet id its event; a PUBACK for that id then releases the event.
#[derive(Debug, Default)]
pub(super) struct AckTracker {
    /// Events not yet acknowledged, by seq.
    events: BTreeMap<u64, Pending>,
    /// For each publish handed to rumqttc, in order: its seq (events only).
    awaiting_pkid: VecDeque<Option<u64>>,
    /// Packet id → seq of events on the wire.
    in_flight: HashMap<u16, u64>,
    /// Publishes rumqttc parked on a packet-id collision (the id is still
    /// owned by an unacknowledged publish): packet id → their seq.
    parked: HashMap<u16, Option<u64>>,
    /// Packet ids whose parked publish rumqttc has just released; its
    /// `Outgoing::Publish` follows and must not pop the FIFO.
    released: HashSet<u16>,
}

impl AckTracker {
    /// Tracks event `seq` until its PUBACK.
    pub(super) fn add(&mut self, seq: u64, pending: Pending) {
        self.events.insert(seq, pending);
    }

    /// True while an event is on the wire without its PUBACK.
    pub(super) fn awaiting_ack(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// A publish (an event when `seq` is set) was handed to rumqttc.
    pub(super) fn handed_over(&mut self, seq: Option<u64>) {
        self.awaiting_pkid.push_back(seq);
    }

    /// rumqttc wrote the next handed-over publish with packet id `pkid`.
    pub(super) fn sent(&mut self, pkid: u16) {
        if self.released.remove(&pkid) {
            return;
        }
        if let Some(Some(seq)) = self.awaiting_pkid.pop_front() {
            if pkid != 0 {
                self.in_flight.insert(pkid, seq);
            }
        }
    }

    /// rumqttc parked the next publish: `pkid` is still owned by the one in
    /// flight. It goes out when that one is acknowledged.
    pub(super) fn parked(&mut self, pkid: u16) {
        let seq = self.awaiting_pkid.pop_front().flatten();
        self.parked.insert(pkid, seq);
    }

    /// A PUBACK. rumqttc reports it before it releases a publish parked on
    /// the same packet id, so the parked one takes over the id here.
    pub(super) fn acknowledged(&mut self, pkid: u16) {
        if let Some(seq) = self.in_flight.remove(&pkid) {
            self.events.remove(&seq);
        }
        if let Some(parked) = self.parked.remove(&pkid) {
            self.released.insert(pkid);
            if let Some(seq) = parked {
                self.in_flight.insert(pkid, seq);
            }
        }
    }

    /// The connection is gone: nothing is in flight any more.
    pub(super) fn disconnected(&mut self) {
        self.awaiting_pkid.clear();
        self.in_flight.clear();
        self.parked.clear();
        self.released.clear();
    }

    /// How many events wait for their PUBACK.
    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    /// The events waiting for their PUBACK, oldest first: resent after a
    /// reconnect.
    pub(super) fn unacknowledged(&self) -> impl Iterator<Item = &Pending> {
        self.events.values()
    }

    /// One waiting event.
    pub(super) fn get(&self, seq: u64) -> Option<&Pending> {
        self.events.get(&seq)
    }

    /// The highest seq up to which every event was acknowledged, given the
    /// highest seq seen so far.
    pub(super) fn acked_mark(&self, highest_seq: u64) -> u64 {
        self.events
            .first_key_value()
            .map_or(highest_seq, |(seq, _)| seq.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: u64) -> Pending {
        Pending {
            topic: "t".into(),
            payload: bytes::Bytes::new(),
            retain: false,
            seq: Some(seq),
        }
    }

    fn waiting(tracker: &AckTracker) -> Vec<u64> {
        tracker.events.keys().copied().collect()
    }

    #[test]
    fn events_are_released_only_on_their_puback() {
        let mut tracker = AckTracker::default();
        tracker.add(1, pending(1));
        tracker.add(2, pending(2));
        tracker.handed_over(None); // a state publish
        tracker.handed_over(Some(1));
        tracker.handed_over(Some(2));
        tracker.sent(1);
        tracker.sent(2);
        tracker.sent(3);
        tracker.acknowledged(3);
        assert_eq!(waiting(&tracker), [1]);
        tracker.acknowledged(1); // the state publish's ack releases nothing
        assert_eq!(tracker.len(), 1);
        tracker.acknowledged(2);
        assert_eq!(tracker.len(), 0);
    }

    #[test]
    fn events_are_kept_across_a_disconnect() {
        let mut tracker = AckTracker::default();
        tracker.add(7, pending(7));
        tracker.handed_over(Some(7));
        tracker.disconnected();
        tracker.sent(1); // a stale report after reconnect attributes nothing
        tracker.acknowledged(1);
        assert_eq!(tracker.len(), 1, "event 7 waits to be resent");
        assert_eq!(
            tracker.unacknowledged().map(|p| p.seq).collect::<Vec<_>>(),
            [Some(7)]
        );
        tracker.handed_over(Some(7));
        tracker.sent(2);
        tracker.acknowledged(2);
        assert_eq!(tracker.len(), 0);
    }

    #[test]
    fn a_publish_parked_on_a_collision_is_released_only_by_its_own_ack() {
        let mut tracker = AckTracker::default();
        tracker.add(1, pending(1));
        tracker.add(2, pending(2));
        tracker.handed_over(Some(1));
        tracker.handed_over(Some(2));
        tracker.sent(5); // event 1 on packet id 5
        tracker.parked(5); // event 2 got id 5 too: rumqttc parks it
                           // rumqttc order: the PUBACK of the first, then the parked one goes out.
        tracker.acknowledged(5);
        tracker.sent(5);
        assert_eq!(waiting(&tracker), [2], "event 2 still unacknowledged");
        assert!(
            tracker.awaiting_pkid.is_empty(),
            "the release did not consume a FIFO entry"
        );
        tracker.acknowledged(5);
        assert_eq!(tracker.len(), 0);
    }

    #[test]
    fn the_acked_mark_stops_below_the_oldest_unacknowledged_event() {
        let mut tracker = AckTracker::default();
        assert_eq!(tracker.acked_mark(41), 41, "nothing waits: all seen");
        tracker.add(42, pending(42));
        tracker.add(44, pending(44));
        assert_eq!(tracker.acked_mark(44), 41);
        tracker.handed_over(Some(42));
        tracker.sent(1);
        tracker.acknowledged(1);
        assert_eq!(tracker.acked_mark(44), 43);
    }
}
