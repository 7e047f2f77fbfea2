package import CPMLL
#if canImport(Glibc)
import Glibc
#endif
public import PMLLCore

/// Shared holds of a lock (see Docs/LockProtocol.md, "Shared holds").
///
/// Readers never own the word: a reader enters this process's ledger, counts itself into
/// `readers` and then loads the word; a free word (owner 0) grants the shared hold. A writer
/// takes the word exactly as an exclusive lock and then waits for `readers` to drain
/// (``ReaderDrain``). Both sides use sequentially consistent operations, so a reader and a
/// writer racing for the lock cannot both miss each other. Since the writer owns the word
/// while it drains, readers that arrive after it queue behind it: a stream of readers
/// cannot starve a writer, which kernel shared locks (flock, OFD, POSIX) do not guarantee.
extension Pool {
    /// A shared hold as acquiring it left it: the grant facts and the ledger word to leave.
    @usableFromInline
    package struct SharedTaken: @unchecked Sendable {
        @usableFromInline package let taken: Taken
        @usableFromInline package let ledger: UInt32
        /// Through the reader bias: in the ledger only, not counted in `readers`.
        @usableFromInline package let biased: Bool
        /// In a ledger word of its own (``ReaderLedger/own(_:lock:)``).
        @usableFromInline package let owned: Bool

        @usableFromInline package init(taken: Taken, ledger: UInt32, biased: Bool = false, owned: Bool = false) {
            self.taken = taken
            self.ledger = ledger
            self.biased = biased
            self.owned = owned
        }
    }

    /// Readers of one process are limited by the ledger words in its process slot.
    static var ledgerFull: PMLLError { .poolFull(table: "reader ledger of this process", capacity: Int(ReaderLedger.words)) }

    @inline(__always)
    package func acquireShared(index: LockIndex, deadline: Int64, cancellation: Cancellation?) throws(PMLLError) -> SharedTaken {
        if let fast = try acquireSharedFast(index) { return fast }
        cancellation?.waitBegins()
        return try acquireSharedSlow(index: index, deadline: deadline, cancellation: cancellation)
    }

    @inline(never)
    package func acquireSharedSlow(index: LockIndex, deadline: Int64, cancellation: Cancellation?) throws(PMLLError) -> SharedTaken {
        var attempt = SharedAttempt(pool: self, entry: memory.lock(index), index: index, deadline: deadline, cancellation: cancellation)
        return try attempt.runHere()
    }

    /// The uncontended path, no syscall and no clock read. With the reader bias on
    /// (``ReaderBias``): a CAS on a ledger word of our own (or, if none is free, one our
    /// threads share) and two loads of the lock's first cache line. Otherwise: the ledger
    /// CAS, one add on that cache line and a load of the word.
    @usableFromInline @inline(__always)
    package func acquireSharedFast(_ index: LockIndex) throws(PMLLError) -> SharedTaken? {
        try checkLockAccess(index, shared: true)
        let entry = memory.lock(index)
        let slot = memory.slot(self.slot)
        let tally = pmll_bias_slot(entry)
        if tally >= 0 {
            let owned = ReaderLedger.own(slot, lock: index)
            guard let ledger = owned ?? ReaderLedger.enter(slot, lock: index) else { throw Self.ledgerFull }
            let w = pmll_bias_check(entry)
            if w & PMLL_OWNER_MASK == 0 {
                pmll_bias_count_at(entry, tally)
                return SharedTaken(taken: Taken(entry: entry, ownerDied: w & PMLL_WORD_DIED != 0, waitedNanoseconds: 0), ledger: ledger, biased: true, owned: owned != nil)
            }
            SharedHolds.leaveBiased(entry, slot: slot, ledger: ledger, owned: owned != nil)
            if w != UInt32.max {
                // A writer holds the word. The slow path counts only holds; the acquisition is
                // counted here, as a counted first try does (and taken back if the wait fails).
                SharedHolds.countAcquisition(entry)
                return nil
            }
            // The bias is off: counted holds until a count shows it on again.
            pmll_bias_hint(entry, 0)
        }
        guard let ledger = ReaderLedger.enter(slot, lock: index) else { throw Self.ledgerFull }
        var before: UInt64 = 0
        let w = pmll_readers_enter(entry, 1 | PMLL_READERS_ONE_ACQUISITION, &before)
        if before >> 32 == 0xFFFF_FFFF { pmll_add64(&pmll_entry_shared(entry).pointee.acquisition_wraps, 1) }
        if w & PMLL_OWNER_MASK == 0 {
            if before & PMLL_READERS_BIASED != 0 {
                pmll_bias_hint(entry, 1)   // the next hold of this lock by this thread tries the bias
            } else if before & PMLL_READERS_INHIBITED == 0 || before >> 32 & ReaderBias.enableEvery == 0 {
                enableReaderBias(entry)
            }
            return SharedTaken(taken: Taken(entry: entry, ownerDied: w & PMLL_WORD_DIED != 0, waitedNanoseconds: 0), ledger: ledger)
        }
        SharedHolds.leave(entry, slot: slot, ledger: ledger)
        return nil
    }

    /// The biased hold alone, without a throw, of a lock this thread holds biased (`tally`, its
    /// slot in the thread's tally): a ledger word of our own, the word free and no owner death
    /// to report; nil for anything else (the caller takes the full path, which
    /// starts again from the beginning). Kept small so that it stays cheap to call.
    @inline(__always)
    package func acquireBiasedQuick(_ index: LockIndex, tally: Int32) -> (entry: UnsafeMutablePointer<pmll_lock_entry_t>, ledger: UInt32)? {
        let entry = memory.lock(index)
        guard lockAccessIsOpen else { return nil }
        let slot = memory.slot(self.slot)
        guard let ledger = ReaderLedger.own(slot, lock: index) else { return nil }
        let w = pmll_bias_check(entry)
        // Anything else (bias off, a writer in, an owner death) is for the full path.
        guard w & (PMLL_OWNER_MASK | PMLL_WORD_DIED) == 0 else {
            SharedHolds.leaveBiased(entry, slot: slot, ledger: ledger, owned: true)
            return nil
        }
        pmll_bias_count_at(entry, tally)
        return (entry, ledger)
    }

    /// Async form: waits on the ``WaiterThread``.
    package func acquireSharedAsync(index: LockIndex, deadline: Int64) async throws -> SharedTaken {
        if let fast = try acquireSharedFast(index) { return fast }
        let attempt = SharedAttempt(pool: self, entry: memory.lock(index), index: index, deadline: deadline, cancellation: Cancellation(), spinNanoseconds: 0, watchesOwner: false)
        return try await WaiterThread.shared.wait(attempt)
    }

    @inline(__always)
    package func releaseShared(_ held: SharedTaken) {
        if held.biased {
            SharedHolds.leaveBiased(held.taken.entry, slot: memory.slot(slot), ledger: held.ledger, owned: held.owned)
        } else {
            SharedHolds.leave(held.taken.entry, slot: memory.slot(slot), ledger: held.ledger)
        }
    }
}

/// Counting a reader out, shared by release and by a reader backing off from a writer.
package enum SharedHolds {
    /// Count first, ledger second (see ``ReaderLedger``); the last reader out wakes a
    /// writer that flagged itself as draining.
    @inline(__always)
    package static func leave(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>, slot: UnsafeMutablePointer<pmll_process_slot_t>, ledger: UInt32) {
        let before = pmll_readers_leave(entry)
        if before & PMLL_READERS_COUNT == 1 && before & PMLL_READERS_DRAIN != 0 {
            _ = pmll_futex_wake(pmll_entry_readers_word(entry), Int32.max)
        }
        ReaderLedger.leave(slot, word: ledger)
    }

    /// A biased holder leaves its ledger only. If a writer revoked the bias and sleeps until
    /// the ledgers are empty (DRAIN with the bias off), it is woken: clearing DRAIN first, so
    /// that a writer about to sleep sees the word change (see ``ReaderDrain``). An owned word
    /// is given back with a plain store, which the load after it may pass (no fence): then
    /// this holder may miss the DRAIN of a writer that scanned before the store showed, and
    /// that writer finds the word empty at its next look (it polls; ``ReaderDrain``).
    @inline(__always)
    package static func leaveBiased(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>, slot: UnsafeMutablePointer<pmll_process_slot_t>, ledger: UInt32, owned: Bool) {
        if owned {
            ReaderLedger.disown(slot, word: ledger)
        } else {
            ReaderLedger.leave(slot, word: ledger)
        }
        if pmll_bias_leave_wakes(entry) != 0 {
            _ = pmll_futex_wake(pmll_entry_readers_word(entry), Int32.max)
        }
    }

    package static func countAcquisition(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) {
        let before = pmll_add64(pmll_entry_readers(entry), PMLL_READERS_ONE_ACQUISITION)
        if before >> 32 == 0xFFFF_FFFF { pmll_add64(&pmll_entry_shared(entry).pointee.acquisition_wraps, 1) }
    }

    /// Takes back the acquisition counted by a first try that then failed for good: in
    /// `shared_retries`, never by a subtraction from `readers` (see ``enterAgain(_:)``).
    package static func uncountAcquisition(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) {
        pmll_add64(&entry.pointee.shared_retries, 1)
    }

    /// A waiting reader's entry (after its first try was counted): one hold in the count and
    /// one in the high half, which this acquisition does not add to the statistics (it is
    /// counted again in `shared_retries`). Every entry adds to the high half, and nothing takes
    /// from it, so `readers` never comes back to a value a writer loaded before someone
    /// entered: a writer that clears or discounts the count by a CAS of that value
    /// (``ReaderDrain``) fails then, rather than taking the new reader's hold (an entry of +1
    /// after a leave of −1 restored the value once: `SharedLockModelTests`). Returns the word
    /// after the entry, as `pmll_readers_enter` does.
    package static func enterAgain(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> UInt32 {
        var before: UInt64 = 0
        let now = pmll_readers_enter(entry, 1 | PMLL_READERS_ONE_ACQUISITION, &before)
        if before >> 32 == 0xFFFF_FFFF { pmll_add64(&pmll_entry_shared(entry).pointee.acquisition_wraps, 1) }
        pmll_add64(&entry.pointee.shared_retries, 1)
        return now
    }

    /// Shared acquisitions since the pool was created: the high half of `readers` and its
    /// wraps, less the additions there that were not acquisitions (`shared_retries`), and this
    /// process's biased acquisitions not yet added (other processes' are added in batches;
    /// see `pmll_bias_count_at`).
    package static func acquisitions(_ entry: UnsafeMutablePointer<pmll_lock_entry_t>) -> UInt64 {
        let v = pmll_load64(pmll_entry_readers(entry))
        let added = pmll_load64(&pmll_entry_shared(entry).pointee.acquisition_wraps) << 32 | v >> 32
        return added &- pmll_load64(&entry.pointee.shared_retries) &+ pmll_bias_pending(entry)
    }
}
