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
    // SAFETY: sched_getcpu(3) has no preconditions.
    let Ok(core) = usize::try_from(unsafe { libc::sched_getcpu() }) else {
        return false;
    };
    if core >= 8 * SET_BYTES {
        return false;
    }
    let Some(allowed) = affinity() else {
        return false;
    };
    // SAFETY: the CPU_* helpers read and clear a bit within the set's size (`core` is
    // within it, checked above); sched_setaffinity(2) sets the calling thread's affinity
    // from whole sets, the second one the affinity it had.
    unsafe {
        if libc::CPU_COUNT(&allowed) < 2 || !libc::CPU_ISSET(core, &allowed) {
            return false;
        }
        let mut elsewhere = allowed;
        libc::CPU_CLR(core, &mut elsewhere);
        if libc::sched_setaffinity(0, SET_BYTES, &elsewhere) != 0 {
            return false;
        }
        libc::sched_setaffinity(0, SET_BYTES, &allowed);
    }
    true
}

/// The size of a `cpu_set_t`, which the affinity calls take.
const SET_BYTES: usize = std::mem::size_of::<libc::cpu_set_t>();

/// The calling thread's affinity, if it can be read (not with more cores than a
/// `cpu_set_t` holds).
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed bit set, written by sched_getaffinity(2) within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, SET_BYTES, &mut set) == 0).then_some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_affinity() -> libc::cpu_set_t {
        affinity().expect("the thread's affinity")
    }

    fn set_affinity(set: &libc::cpu_set_t) {
        // SAFETY: sets the calling thread's affinity from a whole bit set.
        assert_eq!(unsafe { libc::sched_setaffinity(0, SET_BYTES, set) }, 0);
    }

    fn cores(set: &libc::cpu_set_t) -> Vec<usize> {
        // SAFETY: CPU_ISSET reads a bit below the set's size.
        (0..8 * SET_BYTES)
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
            let all = read_affinity();
            let allowed = cores(&all);
            // Two cores or more, narrowed to two of them: moved, and both given back.
            if let [first, second, ..] = allowed[..] {
                set_affinity(&set_of(&[first, second]));
                assert!(
                    step_aside(),
                    "with two cores to run on, the thread is moved"
                );
                assert_eq!(cores(&read_affinity()), vec![first, second]);
            }
            // One core: nothing to do, and the affinity is kept.
            set_affinity(&set_of(&allowed[..1]));
            assert!(!step_aside());
            assert_eq!(cores(&read_affinity()), allowed[..1]);
            // All of them again.
            set_affinity(&all);
            assert_eq!(step_aside(), allowed.len() > 1);
            assert_eq!(cores(&read_affinity()), allowed);
        })
        .join()
        .expect("the affinity checks passed");
    }
}
