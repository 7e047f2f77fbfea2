package import CPMLL
package import PMLLCore

/// When a waiter probes the owner of the word it waits on, and what wakes it: one owner-check
/// interval after it first saw that owner (or at once when the owner's exit watch fired, or
/// when the deadline leaves no later chance), and on the synchronous path the owner's exit
/// (``OwnerWatch``), after which the periodic probe is only a fallback. Shared by exclusive
/// and shared waiters, so both follow one rule.
package struct OwnerCheck {
    private var owner: UInt32 = 0
    private var since: Int64
    private var exited = false
    private let watches: Bool
    private let shared: Bool
    private var watch = OwnerWatch()
    /// The takeover from the watched owner, made when its watch began.
    package private(set) var prepared: PreparedTakeover?

    /// With the owner's exit watched, the probe is a fallback: every 32 intervals.
    static let watchedProbeFactor: Int64 = 32

    package init(start: Int64, watchesOwner: Bool, shared: Bool) {
        since = start
        watches = watchesOwner
        self.shared = shared
    }

    /// Notes the owner seen now. True if it is another one than before (a new hold).
    package mutating func saw(_ owner: UInt32, now: Int64) -> Bool {
        guard owner != self.owner else { return false }
        self.owner = owner
        since = now
        return true
    }

    /// How long to sleep, at most, before probing `owner` again.
    package func interval(_ owner: UInt32, pool: Pool) -> Int64 {
        watch.covers(owner) ? pool.ownerCheckNanoseconds * Self.watchedProbeFactor : pool.ownerCheckNanoseconds
    }

    /// Whether to probe now; a probe due restarts the interval.
    package mutating func due(_ owner: UInt32, now: Int64, deadline: Int64, pool: Pool) -> Bool {
        guard exited || now - since >= interval(owner, pool: pool) || deadline - now <= pool.ownerCheckNanoseconds else { return false }
        since = now
        exited = false
        return true
    }

    /// The probe: true if the owner's exit watch fired and none of its threads can run user
    /// code again, or if its process is gone (OFD byte free; asked second: after the watch
    /// fired it is free only once the kernel has torn the owner down, which is later). An owner
    /// found alive is watched from now on, and its takeover is prepared now, while waiting
    /// (``PreparedTakeover``), rather than after its death.
    package mutating func ownerIsGone(_ owner: UInt32, pool: Pool, entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> Bool {
        if watch.ownerCannotRun(owner, processes: pool.processes) || !pool.processes.isAlive(OwnerToken(rawValue: owner)) { return true }
        if watches && watch.watch(owner, processes: pool.processes) {
            prepared = pool.prepareTakeover(entry, owner: owner, shared: shared)
        }
        return false
    }

    /// The prepared death counter of `owner`, if its takeover was prepared.
    package func preparedCount(_ owner: UInt32) -> Telemetry.OwnerDeathCount? {
        prepared?.owner == owner ? prepared?.count : nil
    }

    /// Sleeps on `word` (and the watched owner's exit). True if it slept until `until`.
    package mutating func sleep(on word: UnsafeMutablePointer<UInt32>, expected: UInt32, until: Int64) -> Bool {
        let woke = watch.sleep(on: word, expected: expected, until: until, owner: expected & PMLL_OWNER_MASK)
        if woke.ownerExited { exited = true }
        return woke.timedOut
    }

    package func end() { watch.closeDescriptor() }
}
