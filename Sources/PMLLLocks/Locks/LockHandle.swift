package import CPMLL
public import PMLLCore

/// A named lock in a pool, chosen at run time (the untyped API: the CLI, a C interface).
/// Every acquisition through it passes the runtime hierarchy check. The typed API
/// (``Lock``, ``LockContext``) is built on it.
public struct LockHandle: Sendable, Hashable {
    public let pool: Pool
    public let id: LockID
    @usableFromInline package let index: LockIndex

    package init(pool: Pool, id: LockID, index: LockIndex) {
        self.pool = pool
        self.id = id
        self.index = index
    }

    public static func == (a: LockHandle, b: LockHandle) -> Bool { a.pool === b.pool && a.index == b.index }
    public func hash(into h: inout Hasher) {
        h.combine(ObjectIdentifier(pool))
        h.combine(index)
    }

    package var entry: UnsafeMutablePointer<pmll_lock_entry_t> { pool.memory.lock(index) }

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
        return pool.processes.info(of: OwnerToken(rawValue: owner), heldSince: HoldStamp.heldSince(entry))
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
        package let saved: UnsafeRawPointer?
        @usableFromInline package let taken: Taken
    }

    /// Hierarchy check, acquisition, and this thread's held-lock record, in one call.
    @usableFromInline
    func enterScope(timeout: Duration?, cancellation: Cancellation?) throws(PMLLError) -> Scope {
        let entry = self.entry
        let saved = pmll_held_top_get()
        try HeldLocks.check(entry, after: saved ?? HeldLocks.asyncTop(), pool: pool)
        let taken = try pool.acquire(index: index, deadline: Pool.deadline(after: timeout), cancellation: cancellation)
        try LockScope.settle(pool, CollectionOfOne(self), ownerDied: taken.ownerDied)
        pmll_held_top_set(entry)
        return Scope(saved: saved.map(UnsafeRawPointer.init), taken: taken)
    }

    @usableFromInline
    func exitScope(_ scope: Scope, inconsistent: Bool) {
        LockScope.release(pool, CollectionOfOne(self), inconsistent: inconsistent) {
            pmll_held_top_set(scope.saved?.assumingMemoryBound(to: pmll_lock_entry_t.self))
        }
    }
}

extension Pool {
    /// Looks up the lock `name`, creating it at `level` if the pool has none of that name.
    /// Throws ``PMLLError/levelMismatch(name:existing:requested:)`` if it exists at another level.
    public func lock(named name: String, level: LockLevel) throws(PMLLError) -> LockHandle {
        let service = lockService
        if let index = service.cache.withLock({ $0.index(of: name) }) {
            let existing = LockLevel(rawValue: memory.lock(index).pointee.level) ?? level
            guard existing == level else { throw .levelMismatch(name: name, existing: existing, requested: level) }
            return LockHandle(pool: self, id: LockID(name: name, level: level), index: index)
        }
        guard let index = try table.index(of: name, level: level, create: !isReadOnly, creation: tableCreation) else {
            throw .readOnlyPool(path: path, operation: "create lock '\(name)'")
        }
        service.cache.withLock { $0.insert(name, index) }
        return LockHandle(pool: self, id: LockID(name: name, level: level), index: index)
    }

    /// Several locks of one level, taken in canonical order (by name) in one call, so that
    /// two processes can never take them in opposite orders.
    @_disfavoredOverload
    public func withLocks<R>(_ locks: [LockHandle], timeout: Duration? = nil, cancellation: Cancellation? = nil, _ body: (inout LockGrant) throws -> R) throws -> R {
        let scope = try LockScope(locks, in: self, timeout: timeout)
        let saved = pmll_held_top_get()
        try HeldLocks.check(scope.ordered[0].entry, after: saved ?? HeldLocks.asyncTop(), pool: self)
        var taken: [Taken] = []
        taken.reserveCapacity(scope.ordered.count)
        do {
            for lock in scope.ordered {
                taken.append(try acquire(index: lock.index, deadline: scope.deadline, cancellation: cancellation))
                pmll_held_top_set(lock.entry)
            }
        } catch {
            scope.abandon(taken.count)
            pmll_held_top_set(saved)
            throw error
        }
        do { try scope.settle(taken) } catch {
            pmll_held_top_set(saved)
            throw error
        }
        let more = TakenList(Array(taken.dropFirst()))
        var grant = LockGrant(held: HeldSet(first: taken[0], more: Unmanaged.passUnretained(more)))
        defer {
            scope.release(inconsistent: grant.releaseInconsistent) { pmll_held_top_set(saved) }
            withExtendedLifetime(more) {}
        }
        return try body(&grant)
    }

    /// Async form of ``withLocks(_:timeout:cancellation:_:)``.
    public func withLocks<R>(_ locks: [LockHandle], timeout: Duration? = nil, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockGrant) async throws -> R) async throws -> R {
        try await withLocksAsync(locks, timeout: timeout, body)
    }

    /// Several locks of one pool and one level, in canonical order; the pool is the locks'.
    package static func withLocks<R>(_ locks: [LockHandle], timeout: Duration?, cancellation: Cancellation?, _ body: (inout LockGrant) throws -> R) throws -> R {
        guard let pool = locks.first?.pool else { throw PMLLError.noLocksGiven }
        return try pool.withLocks(locks, timeout: timeout, cancellation: cancellation, body)
    }

    /// The async scope: the same steps as the synchronous one, with waits on the
    /// ``WaiterThread`` and the held-lock record in a task-local instead of a thread-local.
    package func withLocksAsync<R>(_ locks: [LockHandle], timeout: Duration?, isolation: isolated (any Actor)? = #isolation, _ body: (inout LockGrant) async throws -> R) async throws -> R {
        let scope = try LockScope(locks, in: self, timeout: timeout)
        try HeldLocks.check(scope.ordered[0].entry, after: HeldLocks.currentTop, pool: self)
        var taken: [Taken] = []
        do {
            for lock in scope.ordered {
                if Task.isCancelled { throw PMLLError.cancelled(lock: lock.id.name) }
                taken.append(try await acquireAsync(index: lock.index, deadline: scope.deadline))
            }
        } catch {
            scope.abandon(taken.count)
            throw error
        }
        try scope.settle(taken)
        let more = TakenList(Array(taken.dropFirst()))
        var grant = LockGrant(held: HeldSet(first: taken[0], more: Unmanaged.passUnretained(more)))
        pmll_async_scopes_add(1)
        defer {
            scope.release(inconsistent: grant.releaseInconsistent) { pmll_async_scopes_add(-1) }
            withExtendedLifetime(more) {}
        }
        let top = HeldLocks.HeldLock(entry: UnsafePointer(scope.ordered.last!.entry), pool: self)
        return try await HeldLocks.$asyncTopRecord.withValue(top) {
            try await body(&grant)
        }
    }

    package static func deadline(after timeout: Duration?) -> Int64 {
        guard let timeout else { return .max }
        let ns = max(0, timeout.nanoseconds)
        let now = Clock.monotonicNanoseconds
        return ns > Int64.max - now ? .max : now + ns
    }
}
