//! The admission queue: at most `max_concurrent` runs live at once; the rest wait in FIFO
//! order. A run that needs GPU memory also waits until a device has that much free; it
//! holds back later GPU runs (FIFO among them) but not runs that need no GPU.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::gpu::GpuMonitor;

/// What a waiting run is told.
pub(crate) type Admit = Result<(), String>;

/// Hands out run slots in the order they were asked for.
#[derive(Debug)]
pub(crate) struct Admission {
    state: Mutex<AdmissionState>,
    gpu: Arc<GpuMonitor>,
}

#[derive(Debug)]
struct AdmissionState {
    live: usize,
    max: usize,
    next_ticket: u64,
    waiting: VecDeque<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    gpu_bytes: u64,
    tx: Sender<Admit>,
}

/// A place in the queue; its receiver fires once the run may start (or, for a run that
/// needs a GPU where none can be read, with the reason it never will).
pub(crate) struct Ticket {
    pub id: u64,
    pub admitted: Receiver<Admit>,
}

impl Admission {
    pub fn new(max_concurrent: usize, gpu: Arc<GpuMonitor>) -> Admission {
        Admission {
            state: Mutex::new(AdmissionState {
                live: 0,
                max: max_concurrent.max(1),
                next_ticket: 0,
                waiting: VecDeque::new(),
            }),
            gpu,
        }
    }

    fn lock(&self) -> MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the queue. The ticket's receiver is already ready when the run could start
    /// at once.
    pub fn enqueue(&self, gpu_memory_mb: u64) -> Ticket {
        let (tx, rx) = bounded(1);
        let mut s = self.lock();
        let id = s.next_ticket;
        s.next_ticket += 1;
        s.waiting.push_back(Waiting {
            id,
            gpu_bytes: gpu_memory_mb << 20,
            tx,
        });
        self.admit_waiting(&mut s);
        Ticket { id, admitted: rx }
    }

    /// Leaves the queue (a queued run was cancelled). If the slot was handed out in the
    /// meantime, gives it back.
    pub fn withdraw(&self, ticket_id: u64) {
        let mut s = self.lock();
        if let Some(pos) = s.waiting.iter().position(|w| w.id == ticket_id) {
            s.waiting.remove(pos);
            self.admit_waiting(&mut s);
        } else {
            drop(s);
            self.gpu.cancel_reservation(ticket_id);
            self.release();
        }
    }

    /// Gives a slot back and admits whoever can start now.
    pub fn release(&self) {
        let mut s = self.lock();
        s.live -= 1;
        self.admit_waiting(&mut s);
    }

    /// Looks at the queue again (new GPU readings may let a GPU run start).
    pub fn recheck(&self) {
        let mut s = self.lock();
        self.admit_waiting(&mut s);
    }

    /// Runs live now, and runs waiting.
    pub fn counts(&self) -> (usize, usize) {
        let s = self.lock();
        (s.live, s.waiting.len())
    }

    fn admit_waiting(&self, s: &mut AdmissionState) {
        let mut gpu_blocked = false;
        let mut i = 0;
        while i < s.waiting.len() && s.live < s.max {
            let w = &s.waiting[i];
            if w.gpu_bytes > 0 {
                if gpu_blocked {
                    i += 1;
                    continue;
                }
                match self.gpu.reserve(w.id, w.gpu_bytes) {
                    Ok(true) => {}
                    Ok(false) => {
                        gpu_blocked = true;
                        i += 1;
                        continue;
                    }
                    Err(reason) => {
                        let w = s.waiting.remove(i).expect("index is in range");
                        let _ = w.tx.send(Err(reason));
                        continue;
                    }
                }
            }
            let w = s.waiting.remove(i).expect("index is in range");
            if w.tx.send(Ok(())).is_ok() {
                s.live += 1;
            } else {
                self.gpu.cancel_reservation(w.id);
            }
        }
        let gpu_waiting = s.waiting.iter().filter(|w| w.gpu_bytes > 0).count();
        self.gpu.set_waiting(gpu_waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::NoGpu;
    use std::time::Duration;

    fn admission(max: usize) -> Admission {
        Admission::new(
            max,
            GpuMonitor::new(Arc::new(NoGpu("none".into())), Duration::from_secs(1)),
        )
    }

    #[test]
    fn fifo_with_a_cap_and_withdrawal() {
        let a = admission(1);
        let t0 = a.enqueue(0);
        let t1 = a.enqueue(0);
        let t2 = a.enqueue(0);
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

    #[test]
    fn a_gpu_run_without_a_gpu_is_told_why() {
        let a = admission(4);
        let t = a.enqueue(1024);
        assert_eq!(t.admitted.try_recv().unwrap(), Err("none".to_string()));
        assert_eq!(a.counts(), (0, 0));
    }
}
