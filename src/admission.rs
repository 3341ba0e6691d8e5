//! The admission queue: at most `max_concurrent` runs live at once, the rest wait in FIFO
//! order for a slot.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use crossbeam_channel::{bounded, Receiver, Sender};

/// Hands out run slots in the order they were asked for.
#[derive(Debug)]
pub(crate) struct Admission {
    state: Mutex<AdmissionState>,
}

#[derive(Debug)]
struct AdmissionState {
    live: usize,
    max: usize,
    next_ticket: u64,
    waiting: VecDeque<(u64, Sender<()>)>,
}

/// A place in the queue; its receiver fires once the run may start.
pub(crate) struct Ticket {
    pub id: u64,
    pub admitted: Receiver<()>,
}

impl Admission {
    pub fn new(max_concurrent: usize) -> Admission {
        Admission {
            state: Mutex::new(AdmissionState {
                live: 0,
                max: max_concurrent.max(1),
                next_ticket: 0,
                waiting: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the queue. The ticket's receiver is already ready when a slot was free and
    /// nobody was waiting before us.
    pub fn enqueue(&self) -> Ticket {
        let (tx, rx) = bounded(1);
        let mut s = self.lock();
        let id = s.next_ticket;
        s.next_ticket += 1;
        if s.live < s.max && s.waiting.is_empty() {
            s.live += 1;
            let _ = tx.send(());
        } else {
            s.waiting.push_back((id, tx));
        }
        Ticket { id, admitted: rx }
    }

    /// Leaves the queue (a queued run was cancelled). If the slot was handed out in the
    /// meantime, gives it back.
    pub fn withdraw(&self, ticket_id: u64) {
        let mut s = self.lock();
        if let Some(pos) = s.waiting.iter().position(|(id, _)| *id == ticket_id) {
            s.waiting.remove(pos);
        } else {
            drop(s);
            self.release();
        }
    }

    /// Gives a slot back and admits the next waiting run, if any.
    pub fn release(&self) {
        let mut s = self.lock();
        s.live -= 1;
        while s.live < s.max {
            let Some((_, tx)) = s.waiting.pop_front() else {
                break;
            };
            if tx.send(()).is_ok() {
                s.live += 1;
            }
        }
    }

    /// Runs live now, and runs waiting.
    pub fn counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.live, s.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_a_cap_and_withdrawal() {
        let a = Admission::new(1);
        let t0 = a.enqueue();
        let t1 = a.enqueue();
        let t2 = a.enqueue();
        assert!(t0.admitted.try_recv().is_ok());
        assert!(t1.admitted.try_recv().is_err());
        a.withdraw(t1.id);
        a.release();
        assert!(t2.admitted.try_recv().is_ok());
        assert_eq!(a.counts(), (1, 0));
        // Withdrawing an admitted ticket gives its slot back.
        a.withdraw(t2.id);
        assert_eq!(a.counts(), (0, 0));
    }
}
