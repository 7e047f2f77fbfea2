package import CPMLL
#if canImport(Glibc)
import Glibc
#endif
package import PMLLCore

/// One contended shared acquisition: the word is owned by a writer (holding, or draining
/// readers before it holds). The reader sleeps on the word with READERS_WAITING set, so that
/// the writer's release wakes every reader at once, and retries when the word is free.
///
/// A writer whose process is gone is found by the same liveness probe exclusive waiters use.
/// The reader then takes the word over for an instant (so the death record is written by
/// the word's owner, as always), records the death unless the writer had not begun its
/// critical section (HANDED or DRAINING), and frees the word with DIED kept: the next
/// exclusive holder repairs, and shared holders are told until one does.
package struct SharedAttempt: WaitMachine {
    package let pool: Pool
    package let entry: UnsafeMutablePointer<pmll_lock_entry_t>
    package let index: LockIndex
    package let deadline: Int64
    package let cancellation: Cancellation?
    package let start: Int64
    /// Spinning before the first sleep (none on the waiter thread).
    private var spin: SpinBackoff
    private var lastChance = false
    private var check: OwnerCheck

    package init(pool: Pool, entry: UnsafeMutablePointer<pmll_lock_entry_t>, index: LockIndex, deadline: Int64,
                 cancellation: Cancellation?, start: Int64 = Clock.monotonicNanoseconds, spinNanoseconds: Int64 = SpinBackoff.defaultBudgetNanoseconds, watchesOwner: Bool = true) {
        self.check = OwnerCheck(start: start, watchesOwner: watchesOwner, shared: true)
        self.pool = pool
        self.entry = entry
        self.index = index
        self.deadline = deadline
        self.cancellation = cancellation
        self.start = start
        self.spin = SpinBackoff(start: start, budget: spinNanoseconds, deadline: deadline)
    }

    package var word: UnsafeMutablePointer<UInt32> { pmll_entry_word(entry) }

    package mutating func advance() -> WaitStep<Pool.SharedTaken> {
        let word = self.word
        let slot = pool.memory.slot(pool.slot)
        while true {
            var w = pmll_load32(word)
            let owner = w & PMLL_OWNER_MASK
            if owner == 0 {
                guard let ledger = ReaderLedger.enter(slot, lock: index) else {
                    SharedHolds.uncountAcquisition(entry)
                    return .failed(Pool.ledgerFull)
                }
                let now = SharedHolds.enterAgain(entry)
                if now & PMLL_OWNER_MASK == 0 { return .done(granted(ledger: ledger, died: now & PMLL_WORD_DIED != 0)) }
                SharedHolds.leave(entry, slot: slot, ledger: ledger)
                continue
            }
            if spin.pause() { continue }
            let now = Clock.monotonicNanoseconds
            _ = check.saw(owner, now: now)
            if owner != pool.token.rawValue && check.due(owner, now: now, deadline: deadline, pool: pool) && check.ownerIsGone(owner, pool: pool, entry: entry) {
                freeDeadWriter(owner, word: &w)
                continue
            }
            let cancelled = cancellation?.isCancelled ?? false
            if lastChance || now >= deadline || cancelled {
                SharedHolds.uncountAcquisition(entry)
                return .failed(AcquireAttempt.waitFailure(pool: pool, entry: entry, owner: owner, cancelled: cancelled))
            }
            if w & PMLL_WORD_READERS_WAITING == 0 {
                if pmll_cas32(word, &w, w | PMLL_WORD_READERS_WAITING) == 0 { continue }
                w |= PMLL_WORD_READERS_WAITING
            }
            return .sleep(expected: w, until: min(deadline, now + check.interval(owner, pool: pool)))
        }
    }

    private func granted(ledger: UInt32, died: Bool) -> Pool.SharedTaken {
        let waited = Clock.monotonicNanoseconds - start
        let stats = pmll_entry_shared(entry)
        pmll_add64(&stats.pointee.contended, 1)
        pmll_add64(&stats.pointee.total_wait_ns, UInt64(max(0, waited)))
        pmll_max64(&stats.pointee.max_wait_ns, UInt64(max(0, waited)))
        if died { pool.auditTakeover(entry, shared: true, prepared: check.prepared) }
        return Pool.SharedTaken(taken: Taken(entry: entry, ownerDied: died, waitedNanoseconds: waited), ledger: ledger)
    }

    /// The writer is gone: own the word for an instant, record, and free it with DIED.
    private func freeDeadWriter(_ owner: UInt32, word w: inout UInt32) {
        let sleepers = w & (PMLL_WORD_WAITERS | PMLL_WORD_READERS_WAITING)
        let begun = w & PMLL_WORD_NO_DEATH == 0
        let died = begun ? PMLL_WORD_DIED : w & PMLL_WORD_DIED
        guard pmll_cas32(word, &w, pool.token.rawValue | died) != 0 else { return }
        if begun {
            LockDeath.record(entry, owner: OwnerToken(rawValue: owner), memory: pool.memory, detectedAt: UInt64(Clock.realtimeNanoseconds),
                             count: check.preparedCount(owner))
            entry.pointee.owner_deaths &+= 1
        }
        // Free, keeping DIED; everyone asleep re-checks (the word's sleepers bits are gone).
        var mine = pool.token.rawValue | died
        while pmll_cas32(word, &mine, died | (mine & (PMLL_WORD_WAITERS | PMLL_WORD_READERS_WAITING))) == 0 {}
        if sleepers != 0 || mine & (PMLL_WORD_WAITERS | PMLL_WORD_READERS_WAITING) != 0 {
            _ = pmll_futex_wake(word, Int32.max)
        }
    }

    package mutating func runHere() throws(PMLLError) -> Pool.SharedTaken {
        defer { end() }
        while true {
            switch advance() {
            case .done(let taken): return taken
            case .failed(let error): throw error
            case .sleep(let expected, let until):
                slept(timedOut: check.sleep(on: word, expected: expected, until: until), until: until)
            }
        }
    }

    package mutating func slept(timedOut: Bool, until: Int64) {
        if timedOut && until == deadline { lastChance = true }
    }

    package func failureWhileQueued(cancelled: Bool) -> PMLLError {
        SharedHolds.uncountAcquisition(entry)
        return AcquireAttempt.waitFailure(pool: pool, entry: entry, owner: pmll_load32(word) & PMLL_OWNER_MASK, cancelled: cancelled)
    }

    package func end() { check.end() }
}
