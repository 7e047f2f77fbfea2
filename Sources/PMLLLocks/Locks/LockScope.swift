import CPMLL
package import PMLLCore

/// The steps every lock scope takes around its body, whichever entry point (one lock or
/// several, synchronous or async) it came through: canonical order, repair after an owner
/// death, crash points, release. Only the waiting differs between the entry points.
package struct LockScope {
    package let pool: Pool
    /// The locks in the order they are taken (by name), so that two processes never take
    /// them in opposite orders.
    package let ordered: [LockHandle]
    package let deadline: Int64

    package init(_ locks: [LockHandle], in pool: Pool, timeout: Duration?) throws(PMLLError) {
        guard !locks.isEmpty else { throw .noLocksGiven }
        let ordered = locks.count == 1 ? locks : locks.sorted { Array($0.id.name.utf8).lexicographicallyPrecedes(Array($1.id.name.utf8)) }
        for (a, b) in zip(ordered, ordered.dropFirst()) {
            guard a.pool === b.pool, a.id.level == b.id.level, a.id.name != b.id.name else {
                throw HeldLocks.violation(held: a.id, requested: b.id, pool: pool)
            }
        }
        self.pool = pool
        self.ordered = ordered
        self.deadline = Pool.deadline(after: timeout)
    }

    package func settle(_ taken: [Taken]) throws(PMLLError) {
        try Self.settle(pool, ordered, ownerDied: taken.contains(where: \.ownerDied))
    }

    /// Acquisition failed part-way: releases the first `count` locks taken, last first.
    package func abandon(_ count: Int) {
        for lock in ordered.prefix(count).reversed() { pool.release(index: lock.index) }
    }

    package func release(inconsistent: Bool, beforeRelease: () -> Void) {
        Self.release(pool, ordered, inconsistent: inconsistent, beforeRelease: beforeRelease)
    }

    /// After every lock of a scope is taken: if a previous holder died, its transaction (if
    /// it was committing one) is rolled back before this holder gets the locks. If that
    /// fails, every lock is released, marked inconsistent (the next holder is told, as after
    /// a death), and the typed error thrown: a failed repair never leaves locks held.
    @usableFromInline @inline(__always)
    package static func settle(_ pool: Pool, _ locks: some BidirectionalCollection<LockHandle>, ownerDied: Bool) throws(PMLLError) {
        if ownerDied {
            do {
                try pool.hooks.repairAfterOwnerDeath.withLock { $0 }?(pool)
            } catch {
                for lock in locks.reversed() { pool.release(index: lock.index, inconsistent: true) }
                throw error
            }
        }
        CrashPoint.hit("lock.acquired")
    }

    @usableFromInline @inline(__always)
    package static func release(_ pool: Pool, _ locks: some BidirectionalCollection<LockHandle>, inconsistent: Bool, beforeRelease: () -> Void) {
        CrashPoint.hit("lock.releasing")
        beforeRelease()
        for lock in locks.reversed() { pool.release(index: lock.index, inconsistent: inconsistent) }
    }
}
