import CPMLL
#if canImport(Glibc)
import Glibc
#endif
package import PMLLCore

extension Pool {
    /// A read of the store by a read-only participant, which may not take the store lock: a
    /// sequence-lock read over the commit points. Every commit makes its undo log pending
    /// (`seq > done_seq`) before it changes a byte and moves `done_seq` after the last, so a
    /// body that ran while no log was pending and no log's counters moved saw one committed
    /// state. A torn view only makes the body throw or return garbage that is then discarded.
    ///
    /// After a restart that left commits only in the redo log, the read stands on this
    /// process's own copy of the pages a settle would change (``RedoOverlay``), for as long as
    /// no read-write process has opened the pool.
    package func readWithoutLock<R>(_ body: () throws(PMLLError) -> R) throws(PMLLError) -> R {
        let store = self.store
        let deadline = Clock.monotonicNanoseconds + 2_000_000_000
        while true {
            let view = try readOnlyView(store)
            if view == .settling {
                if Clock.monotonicNanoseconds > deadline {
                    throw .readOnlyPool(path: path, operation: "read the state store: a process that opened the pool read-write after the machine restarted has not yet put in place the commits still only in its redo log")
                }
                usleep(200)
                continue
            }
            if let value = try readAttempt(store, body) {
                if case .overlay(let resets) = view, !overlayHolds(resets: resets) { continue }
                return value
            }
            if commitPoints(store) == nil && Clock.monotonicNanoseconds > deadline {
                // A committer died mid-commit: only a writer can roll its transaction back.
                throw .readOnlyPool(path: path, operation: "read the state store while a dead process's transaction is unfinished (the next process that opens the pool read-write rolls it back)")
            }
            if Clock.monotonicNanoseconds > deadline + 8_000_000_000 {
                throw .readOnlyPool(path: path, operation: "read the state store: it kept changing for 10 s")
            }
            usleep(200)
        }
    }

    /// A point read by a read-write participant: under the store lock if it is free (one CAS,
    /// cheaper than an attempt's loads of every log's commit points), else optimistic (the
    /// sequence-lock read above: readers of different processes neither wait for each other
    /// nor for a committer), under the lock after all if a commit kept changing the store
    /// meanwhile or a log stays pending (a committer that died: only the lock's next holder
    /// rolls it back).
    package func readConsistently<R>(_ body: () throws(PMLLError) -> R) throws(PMLLError) -> R {
        if isReadOnly { return try readWithoutLock(body) }
        let store = self.store
        if !store.optimisticReadsOnly.load(ordering: .relaxed), let value = try withStoreLock(waiting: false, forReading: true, body) { return value }
        for attempt in 0..<Self.optimisticAttempts {
            if let value = try readAttempt(store, body) { return value }
            if attempt > 2 { sched_yield() }
        }
        return try withStoreLock(waiting: true, forReading: true, body)!
    }

    /// ``readConsistently(_:)`` for a point read of `key`: first the free lock (one CAS, the
    /// cheapest read for a process alone: every extra step before it cost a lone reader
    /// measurably; but while this process has lately seen commits run in parallel, the stripe
    /// first), then, while commits run in parallel (the lock held shared), under the
    /// store lock held shared and the stripe of the key's slot, which waits only for a commit
    /// of that stripe (an optimistic attempt would load every log's commit points, cache lines
    /// the committers are writing, and mostly fail: some log is pending most of the time).
    /// `sharedSafe`: `body` reads nothing but that key's record and the versions of other
    /// keys (no key lists).
    /// `store`: this pool's (passed in, as the caller holds it: a fetch is a retain).
    package func readConsistently<R>(key: String, store: StateStore, sharedSafe: Bool, _ body: () throws(PMLLError) -> R) throws(PMLLError) -> R {
        if isReadOnly { return try readWithoutLock(body) }
        if !store.optimisticReadsOnly.load(ordering: .relaxed) {
            // Commits in parallel were seen lately: the stripe first, since taking the free
            // lock exclusively, even for a moment, makes a commit arriving then wait for it.
            let lately = sharedSafe ? services.withRequired(.store, as: StoreService.self) { $0.stripeReads.load(ordering: .relaxed) } : 0
            if lately > 0 {
                services.withRequired(.store, as: StoreService.self) { $0.stripeReads.store(lately - 1, ordering: .relaxed) }
                if let value = try readSharedIfCommitsRun(key, store: store, body) { return value }
            }
            if let value = try withStoreLock(waiting: false, forReading: true, body) { return value }
            if sharedSafe {
                if let value = try readSharedIfCommitsRun(key, store: store, body) {
                    services.withRequired(.store, as: StoreService.self) {
                        $0.stripeReads.store(StoreService.stripeReadsAfterContention, ordering: .relaxed)
                    }
                    return value
                }
            }
        }
        for attempt in 0..<Self.optimisticAttempts {
            if let value = try readAttempt(store, body) { return value }
            if attempt > 2 { sched_yield() }
        }
        return try withStoreLock(waiting: true, forReading: true, body)!
    }

    /// A read under the key's stripe if the store lock is held shared (or biased towards its
    /// shared holders) and not exclusively now.
    private func readSharedIfCommitsRun<R>(_ key: String, store: StateStore, _ body: () throws(PMLLError) -> R) throws(PMLLError) -> R? {
        let entry = try storeLockEntry()
        guard pmll_load32(pmll_entry_word(entry)) == 0 && pmll_lock_readers_present(entry) != 0 else { return nil }
        return try readUnderStripe(key, store: store, body)
    }

    /// One sequence-lock attempt: `body`'s result (or error) if no log was pending before it
    /// and none moved while it ran, else nil. A growth moves the directory's generation inside
    /// a logged commit like any other, so the view refreshed here is checked the same way.
    private func readAttempt<R>(_ store: StateStore, _ body: () throws(PMLLError) -> R) throws(PMLLError) -> R? {
        guard let before = commitPoints(store) else { return nil }
        let outcome: Result<R, PMLLError>
        do throws(PMLLError) {
            try store.refresh()
            outcome = .success(try body())
        } catch { outcome = .failure(error) }
        pmll_fence()
        guard commitPoints(store) == before else { return nil }
        return try outcome.get()
    }

    /// Attempts of an optimistic read before it takes the store lock.
    static let optimisticAttempts = 32

    /// Sums of every log's seq and done_seq (both only ever grow, so equal sums mean no log
    /// moved), or nil while one is pending.
    private func commitPoints(_ store: StateStore) -> CommitPoints? {
        var seqs: UInt64 = 0, dones: UInt64 = 0
        for i in 0..<store.layout.logSlots {
            let header = store.logHeader(i)
            let done = pmll_load64_acquire(&header.pointee.done_seq), seq = pmll_load64_acquire(&header.pointee.seq)
            if seq > done { return nil }
            seqs &+= seq
            dones &+= done
        }
        return CommitPoints(seqs: seqs, dones: dones)
    }
}

struct CommitPoints: Equatable {
    let seqs: UInt64
    let dones: UInt64
}
