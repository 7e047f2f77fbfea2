import CPMLL
import Dispatch

/// A named lock in a pool, chosen at run time (the untyped API: the CLI, a C interface).
/// Every acquisition through it passes the runtime hierarchy check. The typed API
/// (``Lock``, ``LockContext``) is built on it.
public struct LockHandle: Sendable, Hashable {
    public let pool: Pool
    public let id: LockID
    @usableFromInline let index: UInt32

    public static func == (a: LockHandle, b: LockHandle) -> Bool { a.pool === b.pool && a.index == b.index }
    public func hash(into h: inout Hasher) {
        h.combine(ObjectIdentifier(pool))
        h.combine(index)
    }

    var entry: UnsafeMutablePointer<pmll_lock_entry_t> { pool.memory.lock(index) }

    /// Holds the lock while `body` runs; waits at most `timeout` (nil: no limit) and stops
    /// waiting when `cancellation` is cancelled. The lock is released on every exit from
    /// `body`, including a thrown error (released consistent unless the grant was marked).
    ///
    /// Inlinable so that callers specialise it: the closure is called directly and only two
    /// non-generic calls (enter and exit) remain on the uncontended path.
    @_disfavoredOverload   // in async code the async form is meant; in sync code it is the only one
    @inlinable
    public func withLock<R>(timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockGrant) throws -> R) throws -> R {
        let scope = try enterScope(timeout: timeout, cancellation: cancellation)
        var grant = LockGrant(held: HeldSet(first: scope.taken))
        defer { exitScope(scope, inconsistent: grant.releaseInconsistent) }
        return try body(&grant)
    }

    /// Holds the lock if it is free right now; returns nil without waiting otherwise.
    public func withLockIfAvailable<R>(_ body: (inout LockGrant) throws -> R) throws -> R? {
        do {
            return try withLock(timeout: .zero, cancellation: nil, body)
        } catch PMLLError.timeout {
            return nil
        }
    }

    /// Async form: waits without blocking a cooperative thread, honours Task cancellation,
    /// and lets `body` hold the lock across `await` (locks belong to the pool participant,
    /// not to a thread).
    public func withLock<R>(timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockGrant) async throws -> R) async throws -> R {
        try await pool.withLocksAsync([self], timeout: timeout, body)
    }

    /// Who holds the lock right now, or nil if it is free.
    public var currentHolder: HolderInfo? {
        let owner = pmll_load32(pmll_entry_word(entry)) & PMLL_OWNER_MASK
        guard owner != 0 else { return nil }
        return pool.processes.info(of: owner, heldSince: HoldStamp.heldSince(entry))
    }

    /// Wakes every thread sleeping on this lock, in any process, so that each re-checks
    /// the word and its cancellation flag now rather than at its next owner check.
    public func wakeWaiters() {
        _ = pmll_futex_wake(pmll_entry_word(entry), Int32.max)
    }

    // MARK: synchronous scopes

    /// A synchronous scope in progress: what this thread held before it, and what acquiring found.
    @usableFromInline
    struct Scope {
        let saved: UnsafeRawPointer?
        @usableFromInline let taken: Taken
    }

    /// Hierarchy check, acquisition, and this thread's held-lock record, in one call.
    @usableFromInline
    func enterScope(timeout: Duration?, cancellation: Cancellation?) throws(PMLLError) -> Scope {
        let entry = self.entry
        let saved = pmll_held_top_get()
        try HeldLocks.check(entry, after: saved ?? HeldLocks.asyncTop())
        let taken = try pool.acquire(index: index, deadline: Pool.deadline(after: timeout), cancellation: cancellation)
        if taken.ownerDied { try repairAfterDeath() }
        CrashPoint.hit("lock.acquired")
        pmll_held_top_set(entry)
        return Scope(saved: saved.map(UnsafeRawPointer.init), taken: taken)
    }

    /// The previous holder died: its transaction, if it was committing one, is rolled back
    /// before this holder gets the lock. If that fails the lock is released (still marked)
    /// and the typed error thrown.
    @inline(never)
    func repairAfterDeath() throws(PMLLError) {
        do {
            try pool.storeReady()
        } catch {
            pool.release(index: index, inconsistent: true)
            throw error
        }
    }

    @usableFromInline
    func exitScope(_ scope: Scope, inconsistent: Bool) {
        CrashPoint.hit("lock.releasing")
        pmll_held_top_set(scope.saved?.assumingMemoryBound(to: pmll_lock_entry_t.self))
        pool.release(index: index, inconsistent: inconsistent)
    }
}

extension Pool {
    /// Looks up the lock `name`, creating it at `level` if the pool has none of that name.
    /// Throws ``PMLLError/levelMismatch(name:existing:requested:)`` if it exists at another level.
    public func lock(named name: String, level: LockLevel) throws(PMLLError) -> LockHandle {
        if let index = lockCache.withLock({ $0[name] }) {
            let existing = LockLevel(rawValue: memory.lock(index).pointee.level) ?? level
            guard existing == level else { throw .levelMismatch(name: name, existing: existing, requested: level) }
            return LockHandle(pool: self, id: LockID(name: name, level: level), index: index)
        }
        let index = try table.index(of: name, level: level, create: true, creation: tableCreation)!
        lockCache.withLock { $0[name] = index }
        return LockHandle(pool: self, id: LockID(name: name, level: level), index: index)
    }

    /// Several locks of one level, taken in canonical order (by name) in one call, so that
    /// two processes can never take them in opposite orders.
    @_disfavoredOverload
    public func withLocks<R>(_ locks: [LockHandle], timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockGrant) throws -> R) throws -> R {
        let ordered = try canonicalOrder(locks)
        let saved = pmll_held_top_get()
        try HeldLocks.check(ordered[0].entry, after: saved ?? HeldLocks.asyncTop())
        let deadline = Self.deadline(after: timeout)
        var taken: [Taken] = []
        taken.reserveCapacity(ordered.count)
        do {
            for lock in ordered {
                taken.append(try acquire(index: lock.index, deadline: deadline, cancellation: cancellation))
                pmll_held_top_set(lock.entry)
            }
        } catch {
            for lock in ordered.prefix(taken.count).reversed() { release(index: lock.index) }
            pmll_held_top_set(saved)
            throw error
        }
        if taken.contains(where: \.ownerDied) {
            do { try storeReady() } catch {
                for lock in ordered.reversed() { release(index: lock.index, inconsistent: true) }
                pmll_held_top_set(saved)
                throw error
            }
        }
        CrashPoint.hit("lock.acquired")
        let more = TakenList(Array(taken.dropFirst()))
        var grant = LockGrant(held: HeldSet(first: taken[0], more: Unmanaged.passUnretained(more)))
        defer {
            CrashPoint.hit("lock.releasing")
            pmll_held_top_set(saved)
            for lock in ordered.reversed() { release(index: lock.index, inconsistent: grant.releaseInconsistent) }
            withExtendedLifetime(more) {}
        }
        return try body(&grant)
    }

    /// Async form of ``withLocks(_:timeout:cancellation:_:)``.
    public func withLocks<R>(_ locks: [LockHandle], timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockGrant) async throws -> R) async throws -> R {
        try await withLocksAsync(locks, timeout: timeout, body)
    }

    /// Several locks of one pool and one level, in canonical order; the pool is the locks'.
    static func withLocks<R>(_ locks: [LockHandle], timeout: Duration?, cancellation: Cancellation?, _ body: (inout LockGrant) throws -> R) throws -> R {
        guard let pool = locks.first?.pool else { throw PMLLError.invalidLockName(name: "", reason: "no locks given") }
        return try pool.withLocks(locks, timeout: timeout, cancellation: cancellation, body)
    }

    func withLocksAsync<R>(_ locks: [LockHandle], timeout: Duration?, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockGrant) async throws -> R) async throws -> R {
        let ordered = try canonicalOrder(locks)
        try HeldLocks.check(ordered[0].entry, after: HeldLocks.currentTop)
        let deadline = Self.deadline(after: timeout)
        var taken: [Taken] = []
        do {
            for lock in ordered {
                try Task.checkCancellation()
                taken.append(try await acquireWithoutBlocking(lock, deadline: deadline))
            }
        } catch {
            for lock in ordered.prefix(taken.count).reversed() { release(index: lock.index) }
            if error is CancellationError { throw PMLLError.cancelled(lock: ordered[taken.count].id.name) }
            throw error
        }
        let more = TakenList(Array(taken.dropFirst()))
        if taken.contains(where: \.ownerDied) { try storeReady() }
        CrashPoint.hit("lock.acquired")
        var grant = LockGrant(held: HeldSet(first: taken[0], more: Unmanaged.passUnretained(more)))
        pmll_async_scopes_add(1)
        defer {
            CrashPoint.hit("lock.releasing")
            pmll_async_scopes_add(-1)
            for lock in ordered.reversed() { release(index: lock.index, inconsistent: grant.releaseInconsistent) }
            withExtendedLifetime(more) {}
        }
        let top = HeldLocks.HeldLock(entry: UnsafePointer(ordered.last!.entry), pool: self)
        return try await HeldLocks.$asyncTopRecord.withValue(top) {
            try await body(&grant)
        }
    }

    /// Tries the fast path inline; otherwise waits on a Dispatch thread so no cooperative
    /// thread blocks, with Task cancellation wired to the wait.
    private func acquireWithoutBlocking(_ lock: LockHandle, deadline: Int64) async throws -> Taken {
        if let fast = acquireFast(lock.entry) { return fast }
        let cancellation = Cancellation()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Taken, any Error>) in
                DispatchQueue.global().async {
                    continuation.resume(with: Result { () throws(PMLLError) -> Taken in
                        try self.acquire(index: lock.index, deadline: deadline, cancellation: cancellation)
                    })
                }
            }
        } onCancel: {
            cancellation.cancel()
            lock.wakeWaiters()
        }
    }

    private func canonicalOrder(_ locks: [LockHandle]) throws(PMLLError) -> [LockHandle] {
        guard !locks.isEmpty else { throw .invalidLockName(name: "", reason: "no locks given") }
        let ordered = locks.count == 1 ? locks : locks.sorted { Array($0.id.name.utf8).lexicographicallyPrecedes(Array($1.id.name.utf8)) }
        for (a, b) in zip(ordered, ordered.dropFirst()) {
            guard a.pool === b.pool, a.id.level == b.id.level, a.id.name != b.id.name else {
                throw .hierarchyViolation(held: a.id, requested: b.id)
            }
        }
        return ordered
    }

    static func deadline(after timeout: Duration?) -> Int64 {
        guard let timeout else { return .max }
        let ns = max(0, timeout.nanoseconds)
        let now = Clock.monotonicNanoseconds
        return ns > Int64.max - now ? .max : now + ns
    }
}
