//! Where a cold start's work runs: one call, [`step_aside`], for a thread that has just
//! started the process or thread that carries a cold start's longest chain.
//!
//! Linux queues a new process or thread on the core of the thread that made it. The
//! other core, idle as it may be, does not take it while its maker runs on: a core that
//! was idle only briefly of late skips its balancing when it goes idle again. On a cold
//! start of the Codex front (2 cores, `perf record -e 'sched:*'` over `codex_hosts`), the
//! runtime the front forks waited 0.8 to 1.3 ms for a core while the other one idled, and
//! the thread that starts V8 then lost about as much again to the runtime's main thread
//! woken on its core. Each maker is the less urgent of the two, so it moves itself away
//! and leaves its core to what it started; a thread woken later tends to go back to the
//! core it last ran on, which is then the other one too.

/// Moves the calling thread off the core it runs on, so that a process or thread it has
/// just started, queued on that core, runs at once: the thread's affinity without this
/// core moves it to another one now, and its own affinity, given back at once, leaves it
/// there (nothing moves a running thread back). Its affinity ends as it was.
///
/// Nothing is done with fewer than two cores to run on, or where the affinity cannot be
/// read (more cores than a `cpu_set_t` holds) or set. `true` if the thread was moved.
pub fn step_aside() -> bool {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: sched_getcpu(3) has no preconditions.
    let Ok(core) = usize::try_from(unsafe { libc::sched_getcpu() }) else {
        return false;
    };
    if core >= 8 * size {
        return false;
    }
    // SAFETY: a zeroed bit set, written by sched_getaffinity(2) within its size and read by
    // the CPU_* helpers below it (`core` is within it, checked above).
    let allowed = unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0
            || libc::CPU_COUNT(&allowed) < 2
            || !libc::CPU_ISSET(core, &allowed)
        {
            return false;
        }
        allowed
    };
    let mut elsewhere = allowed;
    // SAFETY: clears a bit within the set's size; sched_setaffinity(2) sets the calling
    // thread's affinity from whole sets, the second one the affinity it had.
    unsafe {
        libc::CPU_CLR(core, &mut elsewhere);
        if libc::sched_setaffinity(0, size, &elsewhere) != 0 {
            return false;
        }
        libc::sched_setaffinity(0, size, &allowed);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affinity() -> libc::cpu_set_t {
        // SAFETY: a zeroed bit set, written by sched_getaffinity(2) within its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
            set
        }
    }

    fn set_affinity(set: &libc::cpu_set_t) {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: sets the calling thread's affinity from a whole bit set.
        assert_eq!(unsafe { libc::sched_setaffinity(0, size, set) }, 0);
    }

    fn cores(set: &libc::cpu_set_t) -> Vec<usize> {
        let bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: CPU_ISSET reads a bit below the set's size.
        (0..bits)
            .filter(|core| unsafe { libc::CPU_ISSET(*core, set) })
            .collect()
    }

    fn set_of(chosen: &[usize]) -> libc::cpu_set_t {
        // SAFETY: CPU_SET on a zeroed local bit set, below its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for core in chosen {
                libc::CPU_SET(*core, &mut set);
            }
            set
        }
    }

    #[test]
    fn stepping_aside_moves_the_thread_and_leaves_its_affinity_as_it_was() {
        // On a thread of its own: affinity is per thread.
        std::thread::spawn(|| {
            let all = affinity();
            let allowed = cores(&all);
            // Two cores or more, narrowed to two of them: moved, and both given back.
            if let [first, second, ..] = allowed[..] {
                set_affinity(&set_of(&[first, second]));
                assert!(
                    step_aside(),
                    "with two cores to run on, the thread is moved"
                );
                assert_eq!(cores(&affinity()), vec![first, second]);
            }
            // One core: nothing to do, and the affinity is kept.
            set_affinity(&set_of(&allowed[..1]));
            assert!(!step_aside());
            assert_eq!(cores(&affinity()), allowed[..1]);
            // All of them again.
            set_affinity(&all);
            assert_eq!(step_aside(), allowed.len() > 1);
            assert_eq!(cores(&affinity()), allowed);
        })
        .join()
        .expect("the affinity checks passed");
    }
}
