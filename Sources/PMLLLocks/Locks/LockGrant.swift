public import CPMLL
public import PMLLCore

/// What acquiring one lock found, as the public API shows it.
public struct Acquisition: Sendable, Equatable {
    public let lock: LockID
    /// Set when the previous holder did not finish its critical section: repair the
    /// protected state before relying on it.
    public let previousOwnerDeath: OwnerDeath?
    /// How long the caller waited (0 on the uncontended path).
    public let waitedNanoseconds: Int64
}

/// What acquiring one lock found, trivially copyable so the uncontended path neither
/// retains nor releases anything. The death record is read from the entry only when asked:
/// while the lock is held nobody but the holder writes it.
@usableFromInline
package struct Taken: @unchecked Sendable {
    // A raw pointer keeps the C layout types out of the inlinable interface.
    @usableFromInline package let rawEntry: UnsafeMutableRawPointer
    @usableFromInline package let ownerDied: Bool
    @usableFromInline package let waitedNanoseconds: Int64

    @usableFromInline package init(entry: UnsafeMutablePointer<pmll_lock_entry_t>, ownerDied: Bool, waitedNanoseconds: Int64) {
        rawEntry = UnsafeMutableRawPointer(entry)
        self.ownerDied = ownerDied
        self.waitedNanoseconds = waitedNanoseconds
    }

    package var entry: UnsafeMutablePointer<pmll_lock_entry_t> { rawEntry.assumingMemoryBound(to: pmll_lock_entry_t.self) }

    package var acquisition: Acquisition {
        Acquisition(lock: HeldLocks.id(of: entry), previousOwnerDeath: ownerDied ? LockDeath.read(entry) : nil,
                    waitedNanoseconds: waitedNanoseconds)
    }
}

/// The locks of a multi-lock call after the first. Owned by the call, which outlives every
/// grant and context that points at it.
@usableFromInline
package final class TakenList: Sendable {
    package let items: [Taken]
    package init(_ items: [Taken]) { self.items = items }
}

/// Facts about the locks a scope holds; shared by ``LockGrant`` and ``LockContext``.
/// Only valid inside the scope, which is why both are noncopyable.
@usableFromInline
package struct HeldSet: @unchecked Sendable {
    @usableFromInline package let first: Taken?
    @usableFromInline package let more: Unmanaged<TakenList>?

    @usableFromInline package init(first: Taken?, more: Unmanaged<TakenList>? = nil) {
        self.first = first
        self.more = more
    }

    package var all: [Taken] {
        guard let first else { return [] }
        return [first] + (more?.takeUnretainedValue().items ?? [])
    }

    package var previousOwnerDeath: OwnerDeath? {
        all.first(where: \.ownerDied).map { LockDeath.read($0.entry) }
    }
}

/// Proof, inside a `withLock` scope, that the locks are held, and what acquiring them found.
/// Noncopyable: it cannot outlive the scope that releases the locks.
public struct LockGrant: ~Copyable {
    @usableFromInline let held: HeldSet
    /// Release the locks marked inconsistent: the next holder is told the critical
    /// section did not complete (as if this holder had died).
    public var releaseInconsistent = false

    @usableFromInline init(held: HeldSet) { self.held = held }

    /// The first previous holder, among the locks taken, that did not finish.
    public var previousOwnerDeath: OwnerDeath? { held.previousOwnerDeath }
    /// One entry per lock, in the (canonical) order they were taken.
    public var acquisitions: [Acquisition] { held.all.map(\.acquisition) }

    public mutating func markInconsistent() { releaseInconsistent = true }

    /// Records now as the start of this hold, so that `status` shows exactly how long it has
    /// been held (an uncontended acquisition does not read the clock). Worth one clock read
    /// for holds meant to last.
    public func recordHoldStart() {
        for taken in held.all { HoldStamp.stamp(taken.entry) }
    }
}
