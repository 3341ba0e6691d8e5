//! The admission queue: at most `max_concurrent` runs live at once; the rest wait in FIFO
//! order. A run that needs GPU memory also waits until a device has that much free; it
//! holds back later GPU runs (FIFO among them) but not runs that need no GPU. Each waiting
//! run is told what it waits for (its `waiting_for`), again whenever that changes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::gpu::GpuMonitor;

/// What a waiting run is told.
pub(crate) type Admit = Result<(), String>;

/// Tells a waiting run what it waits for: `(waiting_for, announce)`; `announce` is false
/// the first time (the run's initial status), true for every change after.
pub(crate) type TellWaiting = Box<dyn Fn(&str, bool) + Send + Sync>;

/// `waiting_for` of a run that waits for a free slot.
const FOR_SLOT: &str = "slot";
/// `waiting_for` of a run that waits for enough free GPU memory.
const FOR_GPU_MEMORY: &str = "gpu_memory";

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

struct Waiting {
    id: u64,
    gpu_bytes: u64,
    tx: Sender<Admit>,
    tell: TellWaiting,
    /// What it was last told; `None`: nothing yet.
    told: Option<String>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("id", &self.id)
            .field("gpu_bytes", &self.gpu_bytes)
            .field("told", &self.told)
            .finish()
    }
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
    /// at once; otherwise `tell` hears what the run waits for, now and at every change.
    pub fn enqueue(&self, gpu_memory_mb: u64, tell: TellWaiting) -> Ticket {
        let (tx, rx) = bounded(1);
        let mut s = self.lock();
        let id = s.next_ticket;
        s.next_ticket += 1;
        s.waiting.push_back(Waiting {
            id,
            gpu_bytes: gpu_memory_mb.saturating_mul(1 << 20),
            tx,
            tell,
            told: None,
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
        // Why GPU runs are held back now (once one is, every later one is: FIFO).
        let mut gpu_blocked: Option<String> = None;
        // How many at the front of the queue were looked at (the rest wait for a slot).
        let mut i = 0;
        while i < s.waiting.len() && s.live < s.max {
            let w = &mut s.waiting[i];
            if w.gpu_bytes > 0 {
                if let Some(why) = &gpu_blocked {
                    tell(w, why);
                    i += 1;
                    continue;
                }
                let why = match self.gpu.reserve(w.id, w.gpu_bytes) {
                    Ok(true) => None,
                    Ok(false) => Some(FOR_GPU_MEMORY.to_string()),
                    // A reading failed (a GPU lost, a timeout): the next may work, so the
                    // run waits, saying why, instead of failing for one bad reading.
                    Err(e) if e.is_transient() => Some(format!(
                        "{FOR_GPU_MEMORY}: the GPUs cannot be read now ({e}); waiting for a reading"
                    )),
                    // No GPU can be read here at all: it would wait for ever.
                    Err(e) => {
                        let w = s.waiting.remove(i).expect("index is in range");
                        let _ = w.tx.send(Err(e.reason().to_string()));
                        continue;
                    }
                };
                if let Some(why) = why {
                    tell(w, &why);
                    gpu_blocked = Some(why);
                    i += 1;
                    continue;
                }
            }
            let w = s.waiting.remove(i).expect("index is in range");
            if w.tx.send(Ok(())).is_ok() {
                s.live += 1;
            } else {
                self.gpu.cancel_reservation(w.id);
            }
        }
        for w in s.waiting.iter_mut().skip(i) {
            tell(w, FOR_SLOT);
        }
        let gpu_waiting = s.waiting.iter().filter(|w| w.gpu_bytes > 0).count();
        self.gpu.set_waiting(gpu_waiting);
    }
}

/// Tells `w` that it waits for `why`, unless that is what it was told last.
fn tell(w: &mut Waiting, why: &str) {
    if w.told.as_deref() != Some(why) {
        (w.tell)(why, w.told.is_some());
        w.told = Some(why.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::NoGpu;
    use std::time::Duration;

    fn quiet() -> TellWaiting {
        Box::new(|_, _| {})
    }

    fn admission(max: usize) -> Admission {
        Admission::new(
            max,
            GpuMonitor::new(Arc::new(NoGpu("none".into())), Duration::from_secs(1)),
        )
    }

    #[test]
    fn fifo_with_a_cap_and_withdrawal() {
        let a = admission(1);
        let t0 = a.enqueue(0, quiet());
        let t1 = a.enqueue(0, quiet());
        let t2 = a.enqueue(0, quiet());
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

    /// A GPU whose every reading fails for a moment.
    #[derive(Debug)]
    struct Lost;

    impl crate::gpu::GpuSource for Lost {
        fn sample(&self) -> Result<Vec<crate::gpu::GpuDevice>, crate::gpu::GpuError> {
            Err(crate::gpu::GpuError::Reading("GPU 0: lost".into()))
        }
    }

    #[test]
    fn waiting_runs_are_told_what_they_wait_for_and_a_bad_reading_fails_none() {
        let a = Admission::new(1, GpuMonitor::new(Arc::new(Lost), Duration::from_secs(1)));
        let told = Arc::new(Mutex::new(Vec::new()));
        let recorder = |run: &'static str| -> TellWaiting {
            let told = Arc::clone(&told);
            Box::new(move |why, announce| {
                told.lock().unwrap().push((run, why.to_string(), announce))
            })
        };
        let gpu = a.enqueue(1024, recorder("gpu"));
        let cpu = a.enqueue(0, recorder("cpu"));
        assert!(
            gpu.admitted.try_recv().is_err(),
            "still waiting, not failed"
        );
        assert!(
            cpu.admitted.try_recv().is_ok(),
            "not held behind the GPU run"
        );
        let slot = a.enqueue(0, recorder("slot"));
        let why = "gpu_memory: the GPUs cannot be read now (GPU 0: lost); waiting for a reading";
        assert_eq!(
            *told.lock().unwrap(),
            [
                ("gpu", why.to_string(), false),
                // The only slot went to the other run: now it waits for a slot first.
                ("gpu", "slot".into(), true),
                ("slot", "slot".into(), false),
            ]
        );
        // The slot frees: the GPU run still cannot start, the next one does.
        a.release();
        assert!(slot.admitted.try_recv().is_ok());
        a.release();
        assert!(gpu.admitted.try_recv().is_err());
        assert_eq!(told.lock().unwrap()[3], ("gpu", why.to_string(), true));
        a.recheck();
        assert_eq!(told.lock().unwrap().len(), 4, "told again only on a change");
    }

    #[test]
    fn a_gpu_run_without_a_gpu_is_told_why() {
        let a = admission(4);
        let t = a.enqueue(1024, quiet());
        assert_eq!(t.admitted.try_recv().unwrap(), Err("none".to_string()));
        assert_eq!(a.counts(), (0, 0));
    }
}
