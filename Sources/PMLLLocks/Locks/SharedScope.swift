import CPMLL
public import PMLLCore

/// Shared scopes on one lock: the same steps as an exclusive scope (hierarchy check, repair
/// after an owner death, held-lock record, crash points), with a shared hold in the middle.
/// A shared hold counts as holding the lock's level for the hierarchy.
extension LockHandle {
    /// Holds the lock shared while `body` runs: other shared holders may hold it at the same
    /// time, an exclusive holder may not. A writer that is waiting keeps new shared holders
    /// out until it is done (no writer starvation). Waits at most `timeout` (nil: no limit).
    ///
    /// `previousOwnerDeath` is set while the last exclusive holder's death is unrepaired:
    /// shared holders cannot repair (they must not write), so every one of them is told until
    /// an exclusive holder takes the lock.
    @_disfavoredOverload
    @inlinable
    public func withSharedLock<R>(timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockGrant) throws -> R) throws -> R {
        let scope = try enterBiasedScope() ?? enterSharedScope(timeout: timeout, cancellation: cancellation)
        var grant = LockGrant(held: HeldSet(first: scope.taken))
        defer { exitSharedScope(scope) }
        return try body(&grant)
    }

    /// Holds the lock shared if that is possible right now; nil without waiting otherwise.
    public func withSharedLockIfAvailable<R>(_ body: (inout LockGrant) throws -> R) throws -> R? {
        do {
            return try withSharedLock(timeout: .zero, cancellation: nil, body)
        } catch PMLLError.timeout {
            return nil
        }
    }

    /// Async form: waits without blocking a cooperative thread and honours Task cancellation.
    public func withSharedLock<R>(timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockGrant) async throws -> R) async throws -> R {
        try HeldLocks.check(entry, after: HeldLocks.currentTop, pool: pool)
        if Task.isCancelled { throw PMLLError.cancelled(lock: id.name) }
        let held = try await pool.acquireSharedAsync(index: index, deadline: Pool.deadline(after: timeout))
        do {
            try LockScope.settle(pool, EmptyCollection(), ownerDied: held.taken.ownerDied)
        } catch {
            pool.releaseShared(held)
            throw error
        }
        var grant = LockGrant(held: HeldSet(first: held.taken))
        pmll_async_scopes_add(1)
        defer {
            CrashPoint.hit("lock.releasing")
            pmll_async_scopes_add(-1)
            pool.releaseShared(held)
        }
        let top = HeldLocks.HeldLock(entry: UnsafePointer(entry), pool: pool)
        return try await HeldLocks.$asyncTopRecord.withValue(top) {
            try await body(&grant)
        }
    }

    /// The live processes holding the lock shared right now.
    public var currentReaders: [ReaderInfo] {
        pool.processes.readers(of: index).readers
    }

    /// Three words, so that it comes back in registers: a larger result is returned through
    /// memory and copied, which cost more than the lock itself (a store-forwarding stall).
    @usableFromInline
    struct SharedScope {
        let saved: UnsafeRawPointer?
        @usableFromInline let entry: UnsafeMutableRawPointer
        /// waited nanoseconds << 8 | biased << 7 | owned << 6 | ledger word << 1 | owner died
        @usableFromInline let bits: UInt64

        init(saved: UnsafeRawPointer?, held: Pool.SharedTaken) {
            self.saved = saved
            entry = held.taken.rawEntry
            bits = UInt64(max(0, held.taken.waitedNanoseconds)) << 8 | (held.biased ? 0x80 : 0) | (held.owned ? 0x40 : 0) | UInt64(held.ledger) << 1 | (held.taken.ownerDied ? 1 : 0)
        }

        /// A biased hold in an owned word, no wait, no owner death.
        init(saved: UnsafeRawPointer?, entry: UnsafeMutablePointer<pmll_lock_entry_t>, ledger: UInt32) {
            self.saved = saved
            self.entry = UnsafeMutableRawPointer(entry)
            bits = 0xC0 | UInt64(ledger) << 1
        }

        @usableFromInline var taken: Taken {
            Taken(entry: entry.assumingMemoryBound(to: pmll_lock_entry_t.self), ownerDied: bits & 1 != 0, waitedNanoseconds: Int64(bits >> 8))
        }
        var held: Pool.SharedTaken { Pool.SharedTaken(taken: taken, ledger: UInt32(bits >> 1 & 0x1F), biased: bits & 0x80 != 0, owned: bits & 0x40 != 0) }
    }

    /// The uncontended biased hold (``Pool/acquireBiasedQuick(_:)``) with the hierarchy check,
    /// in a small function that cannot throw; nil sends the caller the full way.
    @usableFromInline @inline(never)
    func enterBiasedScope() -> SharedScope? {
        // Most shared holds of a lock this thread has not held biased are counted: one test says so.
        let entry = self.entry
        let tally = pmll_bias_slot(entry)
        guard tally >= 0 else { return nil }
        let saved = pmll_held_top_get()
        if let saved {
            guard saved.pointee.level < entry.pointee.level else { return nil }
        } else if pmll_async_scopes() != 0 {
            return nil
        }
        guard let held = pool.acquireBiasedQuick(index, tally: tally) else { return nil }
        pmll_held_top_set(held.entry)
        return SharedScope(saved: saved.map(UnsafeRawPointer.init), entry: held.entry, ledger: held.ledger)
    }

    @usableFromInline
    func enterSharedScope(timeout: Duration?, cancellation: Cancellation?) throws(PMLLError) -> SharedScope {
        let entry = self.entry
        let saved = pmll_held_top_get()
        try HeldLocks.check(entry, after: saved ?? HeldLocks.asyncTop(), pool: pool)
        let held = try pool.acquireShared(index: index, deadline: Pool.deadline(after: timeout), cancellation: cancellation)
        do {
            // The repair of a dead holder's transaction does not need this lock exclusive: it
            // runs under the store's own lock.
            try LockScope.settle(pool, EmptyCollection(), ownerDied: held.taken.ownerDied)
        } catch {
            pool.releaseShared(held)
            throw error
        }
        pmll_held_top_set(entry)
        return SharedScope(saved: saved.map(UnsafeRawPointer.init), held: held)
    }

    @usableFromInline
    func exitSharedScope(_ scope: SharedScope) {
        CrashPoint.hit("lock.releasing")
        pmll_held_top_set(scope.saved?.assumingMemoryBound(to: pmll_lock_entry_t.self))
        pool.releaseShared(scope.held)
    }
}
