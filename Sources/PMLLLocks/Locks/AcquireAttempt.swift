package import CPMLL
#if canImport(Glibc)
import Glibc
#endif
package import PMLLCore

/// One contended acquisition of a lock word, as a state machine that never blocks: the
/// synchronous path sleeps on the word itself between steps, the waiter thread sleeps on
/// many attempts' words at once (``WaiterThread``). One protocol, two ways to wait.
///
/// - A free word is taken by CAS (keeping DIED and WAITERS).
/// - A word handed to this participant (HANDED) is claimed.
/// - The owner's liveness is probed (a syscall) only once it has kept the lock for a whole
///   check interval, or when the deadline leaves no later chance: a dead owner never
///   changes, a live one usually has by then. A dead owner's word is taken over by CAS and
///   the death recorded.
/// - A waiter starving past the threshold registers as the handoff target, so the next
///   release stores its token with HANDED instead of freeing and no newcomer can barge.
/// - A handoff its target does not claim within ``handoffClaimNanoseconds`` (the target was
///   stopped, or is starved of CPU) is taken by a waiter that sees it, as a free word: a
///   stopped waiter must not stall everyone else (issue 16).
package struct AcquireAttempt: WaitMachine {
    /// The bits a new owner keeps: the death mark and who sleeps on the word.
    static let keptBits = PMLL_WORD_DIED | PMLL_WORD_WAITERS | PMLL_WORD_READERS_WAITING

    package let pool: Pool
    package let entry: UnsafeMutablePointer<pmll_lock_entry_t>
    package let index: LockIndex
    package let deadline: Int64
    package let cancellation: Cancellation?
    package let start: Int64
    /// Spinning before the first sleep (none on the waiter thread, which serves others).
    private var spin: SpinBackoff
    private var slept = false, contended = false, requestedHandoff = false, handoffIncoming = false, lastChance = false
    /// The handed word first seen at `handedSeenAt` (its target's claim clock).
    private var handedWord: UInt32 = 0, handedSeenAt: Int64 = 0
    /// Since when this attempt waits for a handoff a releaser may be storing.
    private var incomingSince: Int64 = 0
    private var ledger: UInt32?
    private var registered = false
    /// The sync path sleeps on the owner's exit too (the waiter thread polls instead).
    private var check: OwnerCheck

    package init(pool: Pool, entry: UnsafeMutablePointer<pmll_lock_entry_t>, index: LockIndex, deadline: Int64,
         cancellation: Cancellation?, start: Int64 = Clock.monotonicNanoseconds, spinNanoseconds: Int64 = SpinBackoff.defaultBudgetNanoseconds,
         watchesOwner: Bool = true) {
        self.check = OwnerCheck(start: start, watchesOwner: watchesOwner, shared: false)
        self.pool = pool
        self.entry = entry
        self.index = index
        self.deadline = deadline
        self.cancellation = cancellation
        self.start = start
        self.spin = SpinBackoff(start: start, budget: spinNanoseconds, deadline: deadline)
    }

    /// The word to sleep on after `.sleep`.
    package var word: UnsafeMutablePointer<UInt32> { pmll_entry_word(entry) }

    /// Runs the protocol until the lock is taken, the attempt fails, or it must sleep.
    package mutating func advance() -> WaitStep<Taken> {
        let word = self.word
        let token = pool.token.rawValue
        while true {
            var w = pmll_load32(word)
            let owner = w & PMLL_OWNER_MASK

            if owner == 0 {
                let desired = token | (w & Self.keptBits) | (slept ? PMLL_WORD_WAITERS : 0)
                if pmll_cas32(word, &w, desired) != 0 {
                    if requestedHandoff { pool.withdrawHandoff(entry) }
                    return .done(pool.granted(entry, start: start, contended: contended, died: w & PMLL_WORD_DIED != 0))
                }
                continue
            }
            if owner == token && w & PMLL_WORD_HANDED != 0 {
                // Handed to this participant on release (we asked, or a sibling thread did).
                if pmll_cas32(word, &w, w & ~PMLL_WORD_HANDED) != 0 {
                    return .done(pool.granted(entry, start: start, contended: true, died: w & PMLL_WORD_DIED != 0))
                }
                continue
            }
            contended = true
            // Spinning comes before any clock-driven step: they matter only to longer waits.
            if w & PMLL_WORD_HANDED == 0 && spin.pause() { continue }

            let now = Clock.monotonicNanoseconds
            if w & PMLL_WORD_HANDED != 0 && owner != token {
                if w != handedWord {
                    handedWord = w
                    handedSeenAt = now
                } else if now - handedSeenAt >= pool.handoffClaimNanoseconds {
                    // Its target has not claimed it: take it as if it were free (no death:
                    // the target never entered its critical section).
                    if pmll_cas32(word, &w, token | (w & Self.keptBits) | (slept ? PMLL_WORD_WAITERS : 0)) != 0 {
                        if requestedHandoff { pool.withdrawHandoff(entry) }
                        pmll_add64(&entry.pointee.handoffs_unclaimed, 1)
                        return .done(pool.granted(entry, start: start, contended: true, died: w & PMLL_WORD_DIED != 0))
                    }
                    continue
                }
            }
            if check.saw(owner, now: now) { _ = HoldStamp.heldSince(entry) }
            if owner != token && check.due(owner, now: now, deadline: deadline, pool: pool) && check.ownerIsGone(owner, pool: pool, entry: entry) {
                if let taken = takeOver(from: owner, word: &w) { return .done(taken) }
                continue
            }

            let cancelled = cancellation?.isCancelled ?? false
            if lastChance || now >= deadline || cancelled {
                if requestedHandoff {
                    requestedHandoff = false
                    handoffIncoming = !pool.withdrawHandoff(entry)
                }
                if handoffIncoming {
                    // A releaser already chose us and is storing our token: giving up now
                    // would strand the lock. Its death is caught by the owner check above.
                    // Wait a bounded time only: if the handoff was taken from us meanwhile
                    // (we were stopped), none is coming, and one that comes after we left
                    // is taken by the next waiter as unclaimed.
                    if incomingSince == 0 { incomingSince = now }
                    if now - incomingSince < pool.ownerCheckNanoseconds * 4 {
                        pmll_cpu_relax()
                        continue
                    }
                    handoffIncoming = false
                }
                return .failed(Self.waitFailure(pool: pool, entry: entry, owner: owner, cancelled: cancelled))
            }

            if !requestedHandoff && now - start >= pool.starvationNanoseconds {
                var none: UInt32 = 0
                requestedHandoff = pmll_cas32(pmll_entry_handoff(entry), &none, token) != 0
            }
            if w & PMLL_WORD_WAITERS == 0 {
                if pmll_cas32(word, &w, w | PMLL_WORD_WAITERS) == 0 { continue }
                w |= PMLL_WORD_WAITERS
            }
            if !registered {
                registered = true
                ledger = pool.processes.noteWaiting(slot: pool.slot, lock: index)
            }
            return .sleep(expected: w, until: min(deadline, now + check.interval(owner, pool: pool)))
        }
    }

    /// The owner is gone: take the word over. A handed-but-unclaimed word belongs to a
    /// waiter that died before its critical section began: taken over without reporting a death.
    private mutating func takeOver(from owner: UInt32, word w: inout UInt32) -> Taken? {
        // Handed but unclaimed, or still draining readers: its critical section never began.
        let handed = w & PMLL_WORD_NO_DEATH != 0
        let died = handed ? w & PMLL_WORD_DIED : PMLL_WORD_DIED
        guard pmll_cas32(word, &w, pool.token.rawValue | (w & (PMLL_WORD_WAITERS | PMLL_WORD_READERS_WAITING)) | died) != 0 else { return nil }
        if requestedHandoff { pool.withdrawHandoff(entry) }
        if !handed {
            LockDeath.record(entry, owner: OwnerToken(rawValue: owner), memory: pool.memory, detectedAt: UInt64(Clock.realtimeNanoseconds),
                             count: check.preparedCount(owner))
            entry.pointee.owner_deaths &+= 1
        }
        return pool.granted(entry, start: start, contended: true, died: died != 0, prepared: check.prepared)
    }

    /// ``WaitMachine/run()`` for this machine, written out: the generic one stayed
    /// unspecialised across the module boundary, and every contended step then went through
    /// witness tables and a copy of the generic `WaitStep` (3.5 % of a contended run in memmove).
    package mutating func runHere() throws(PMLLError) -> Taken {
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
        slept = true
        if timedOut && until == deadline { lastChance = true }
    }

    package func failureWhileQueued(cancelled: Bool) -> PMLLError {
        Self.waitFailure(pool: pool, entry: entry, owner: pmll_load32(word) & PMLL_OWNER_MASK, cancelled: cancelled)
    }

    /// A wait on the word that ends unserved: cancelled, or a timeout (counted) naming the owner.
    /// Shared by exclusive and shared waiters.
    static func waitFailure(pool: Pool, entry: UnsafeMutablePointer<pmll_lock_entry_t>, owner: UInt32, cancelled: Bool) -> PMLLError {
        let name = String(fixedCString: entry.pointee.name)
        if cancelled { return .cancelled(lock: name) }
        pmll_add64(pmll_entry_timeouts(entry), 1)
        Telemetry.timeout(lock: String(fixedCString: entry.pointee.name))
        let holder = owner == 0 ? nil : pool.processes.info(of: OwnerToken(rawValue: owner), heldSince: HoldStamp.heldSince(entry))
        pool.audit(.lockTimeout, .failed, "lock '\(name)': timed out waiting\(holder.map { " for " + $0.description } ?? "")")
        return .timeout(lock: name, holder: holder)
    }

    /// Takes this attempt off the process table's waiter ledger (what `status` shows).
    package func end() {
        pool.processes.doneWaiting(slot: pool.slot, ledger: ledger)
        check.end()
    }
}
