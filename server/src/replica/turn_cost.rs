//! Where a slow turn of the driver's loop went: its own CPU, the time it
//! was preempted or blocked, the synced writes and the state lock. A turn
//! of 100 ms or more is logged with these (a turn that burned its time on
//! CPU is a code path to fix; one that waited for the disk or was
//! preempted by other processes is the machine's).

use std::time::{Duration, Instant};

/// What the calling thread has used so far (Linux: `getrusage` with
/// `RUSAGE_THREAD`; elsewhere zeros).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadUsage {
    /// User and system CPU time.
    pub cpu: Duration,
    /// Times the thread gave the CPU up to wait (a syscall, a lock).
    pub waits: u64,
    /// Times the scheduler took the CPU from it.
    pub preempted: u64,
}

impl ThreadUsage {
    /// The calling thread's usage now.
    pub fn now() -> Self {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: `getrusage` writes one `rusage` into the zeroed value
            // it is given and reports failure through its return value.
            #[allow(unsafe_code)]
            let (result, usage) = unsafe {
                let mut usage: libc::rusage = std::mem::zeroed();
                (libc::getrusage(libc::RUSAGE_THREAD, &raw mut usage), usage)
            };
            if result != 0 {
                return Self::default();
            }
            let time = |t: libc::timeval| {
                Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                    .saturating_add(Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0)))
            };
            Self {
                cpu: time(usage.ru_utime).saturating_add(time(usage.ru_stime)),
                waits: u64::try_from(usage.ru_nvcsw).unwrap_or(0),
                preempted: u64::try_from(usage.ru_nivcsw).unwrap_or(0),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            Self::default()
        }
    }
}

/// One turn's costs, summed over its phases.
#[derive(Debug)]
pub struct TurnCost {
    began: Instant,
    usage: ThreadUsage,
    /// Writes to storage (synced or not).
    pub persist: Duration,
    /// Waiting for the state lock to apply.
    pub state_lock: Duration,
    /// Applying chosen commands (with the lock held).
    pub apply: Duration,
}

impl TurnCost {
    /// A turn that begins now.
    pub fn begin() -> Self {
        Self { began: Instant::now(), usage: ThreadUsage::now(), persist: Duration::ZERO, state_lock: Duration::ZERO, apply: Duration::ZERO }
    }

    /// Logs the turn if it took `slow` or more.
    pub fn end(&self, slow: Duration) {
        let turn = self.began.elapsed();
        if turn < slow {
            return;
        }
        let usage = ThreadUsage::now();
        let cpu = usage.cpu.saturating_sub(self.usage.cpu);
        tracing::warn!(
            turn_ms = turn.as_millis(),
            cpu_ms = cpu.as_millis(),
            off_cpu_ms = turn.saturating_sub(cpu).as_millis(),
            preempted = usage.preempted.saturating_sub(self.usage.preempted),
            waits = usage.waits.saturating_sub(self.usage.waits),
            persist_ms = self.persist.as_millis(),
            state_lock_ms = self.state_lock.as_millis(),
            apply_ms = self.apply.as_millis(),
            "slow driver turn"
        );
    }
}
