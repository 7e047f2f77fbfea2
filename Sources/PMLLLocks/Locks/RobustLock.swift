public import CPMLL
#if canImport(Glibc)
import Glibc
#endif
public import PMLLCore

/// The robust lock protocol over one 32-bit futex word (see Docs/LockProtocol.md).
///
/// word = owner token (24 bits) | HANDED | DIED | WAITERS
/// - Uncontended acquire is CAS 0 -> token, release CAS token -> 0: no syscall.
/// - Waiters set WAITERS and sleep with FUTEX_WAIT_BITSET to an absolute CLOCK_MONOTONIC
///   deadline never further than the owner-check interval, then re-read the word; a
///   waiter that finds the owner's process gone takes the word over by CAS and is told.
/// - A waiter starving past the threshold registers as the handoff target; the next
///   release stores its token with HANDED instead of freeing, so no newcomer can barge.
extension Pool {
    @inlinable @inline(__always)
    package func acquire(index: LockIndex, deadline: Int64, cancellation: Cancellation?) throws(PMLLError) -> Taken {
        try checkLockAccess(index, shared: false)
        let entry = memory.lock(index)
        let taken: Taken
        if let fast = acquireFast(entry) {
            taken = fast
        } else {
            taken = try acquireSlow(entry: entry, index: index, deadline: deadline, cancellation: cancellation)
        }
        // Owning the word keeps new readers out; those already in must leave first.
        if pmll_lock_readers_present(entry) != 0 { try drainReaders(index: index, deadline: deadline, cancellation: cancellation) }
        return taken
    }

    /// The uncontended path: one CAS and one plain store (the holder's own counter), no
    /// syscall, no clock read (see ``HoldStamp``).
    @inlinable @inline(__always)
    package func acquireFast(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> Taken? {
        guard pmll_lock_try_fast(entry, token.rawValue) != 0 else { return nil }
        entry.pointee.acquisitions &+= 1
        return Taken(entry: entry, ownerDied: false, waitedNanoseconds: 0)
    }

    @inlinable @inline(__always)
    package func release(index: LockIndex, inconsistent: Bool = false) {
        release(entry: memory.lock(index), inconsistent: inconsistent)
    }

    /// ``release(index:inconsistent:)`` when the caller has the entry (a point read of the store
    /// keeps it: finding it again reads `memory`, a struct of several references).
    @inlinable @inline(__always)
    package func release(entry: UnsafeMutablePointer<pmll_lock_entry_t>, inconsistent: Bool = false) {
        if !inconsistent && pmll_lock_release_fast(entry, token.rawValue) != 0 { return }
        releaseSlow(entry: entry, inconsistent: inconsistent)
    }

    @usableFromInline @inline(never)
    func acquireSlow(entry: UnsafeMutablePointer<pmll_lock_entry_t>, index: LockIndex, deadline: Int64, cancellation: Cancellation?) throws(PMLLError) -> Taken {
        cancellation?.waitBegins()
        _ = telemetry   // made now, while the lock is taken, not after the wait (``granted``)
        var attempt = AcquireAttempt(pool: self, entry: entry, index: index, deadline: deadline, cancellation: cancellation)
        return try attempt.runHere()
    }

    /// Waits for the lock on the ``WaiterThread``, so that no thread of the caller blocks.
    package func acquireAsync(index: LockIndex, deadline: Int64) async throws -> Taken {
        try checkLockAccess(index, shared: false)
        let entry = memory.lock(index)
        let taken: Taken
        if let fast = acquireFast(entry) {
            taken = fast
        } else {
            _ = telemetry   // made now, while the lock is taken, not after the wait (``granted``)
            let attempt = AcquireAttempt(pool: self, entry: entry, index: index, deadline: deadline, cancellation: Cancellation(), spinNanoseconds: 0, watchesOwner: false)
            taken = try await WaiterThread.shared.wait(attempt)
        }
        if pmll_lock_readers_present(entry) != 0 { try await drainReadersAsync(index: index, deadline: deadline) }
        return taken
    }

    /// Stamps statistics as the new holder (plain stores: only the holder writes them).
    /// `prepared`: the takeover's record, made while waiting.
    package func granted(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>, start: Int64, contended: Bool, died: Bool, prepared: PreparedTakeover? = nil) -> Taken {
        let waited = contended ? Clock.monotonicNanoseconds - start : 0
        entry.pointee.acquisitions &+= 1
        if contended {
            telemetry.lockWait.recordNanoseconds(waited)
            entry.pointee.contended &+= 1
            entry.pointee.total_wait_ns &+= UInt64(waited)
            if UInt64(waited) > entry.pointee.max_wait_ns { entry.pointee.max_wait_ns = UInt64(waited) }
        }
        HoldStamp.stamp(entry)
        if died { auditTakeover(entry, prepared: prepared) }
        return Taken(entry: entry, ownerDied: died, waitedNanoseconds: waited)
    }

    /// The audit record of a lock taken over from a holder that died (or left it inconsistent):
    /// the prepared text when it describes the entry's death record, else made now.
    @inline(never)
    package func auditTakeover(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>, shared: Bool = false, prepared: PreparedTakeover? = nil) {
        audit(.ownerDeath, .ok, prepared?.text(for: entry) ?? Self.takeoverText(entry, death: LockDeath.read(entry), shared: shared))
    }

    package static func takeoverText(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>, death: OwnerDeath, shared: Bool) -> String {
        "lock '\(String(fixedCString: entry.pointee.name))' (\(HeldLocks.id(of: entry).level)) taken over\(shared ? " shared" : ""): \(death)"
    }

    /// Takes back this participant's handoff request. False when a releaser has already
    /// taken it, which means the lock is being handed to us.
    @discardableResult
    package func withdrawHandoff(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> Bool {
        var mine = token.rawValue
        return pmll_cas32(pmll_entry_handoff(entry), &mine, 0) != 0
    }

    @usableFromInline @inline(never)
    func releaseSlow(entry: UnsafeMutablePointer<pmll_lock_entry_t>, inconsistent: Bool) {
        let word = pmll_entry_word(entry)
        var w = pmll_load32(word)
        guard w & PMLL_OWNER_MASK == token.rawValue else {
            Self.logger.error("release of a lock this participant does not hold", metadata: ["lock": "\(String(fixedCString: entry.pointee.name))"])
            return
        }
        let died: UInt32 = inconsistent ? PMLL_WORD_DIED : 0
        if inconsistent {
            LockDeath.record(entry, owner: token, memory: memory, detectedAt: UInt64(Clock.realtimeNanoseconds), cause: LockDeath.causeInconsistent)
        }
        var target = pmll_load32(pmll_entry_handoff(entry))
        if target != 0 && pmll_cas32(pmll_entry_handoff(entry), &target, 0) != 0 {
            entry.pointee.handoffs &+= 1
            _ = pmll_xchg32(word, target | PMLL_WORD_HANDED | PMLL_WORD_WAITERS | died)
            _ = pmll_futex_wake(word, Int32.max)
            return
        }
        while pmll_cas32(word, &w, died) == 0 {}
        if w & PMLL_WORD_READERS_WAITING != 0 {
            _ = pmll_futex_wake(word, Int32.max)   // readers all get in at once
        } else if w & PMLL_WORD_WAITERS != 0 {
            _ = pmll_futex_wake(word, 1)
        }
    }
}
