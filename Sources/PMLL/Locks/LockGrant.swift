/// What taking one or several locks found. A single lock is stored inline, so the
/// uncontended path allocates nothing.
public struct Acquisitions: Sendable, Equatable {
    let firstLock: LockID?
    public let first: Acquisition?
    let rest: [Acquisition]
    let restLocks: [LockID]

    init() {
        (firstLock, first, rest, restLocks) = (nil, nil, [], [])
    }

    init(_ lock: LockID, _ acquisition: Acquisition) {
        (firstLock, first, rest, restLocks) = (lock, acquisition, [], [])
    }

    init(_ taken: [(LockID, Acquisition)]) {
        (firstLock, first) = (taken.first?.0, taken.first?.1)
        rest = taken.dropFirst().map(\.1)
        restLocks = taken.dropFirst().map(\.0)
    }

    /// One entry per lock, in the order they were taken.
    public var all: [Acquisition] { first.map { [$0] + rest } ?? [] }
    /// The locks, in the order they were taken (canonical order for multi-lock calls).
    public var locks: [LockID] { firstLock.map { [$0] + restLocks } ?? [] }

    /// The first previous holder, among the locks taken, that did not finish.
    public var previousOwnerDeath: OwnerDeath? {
        if let death = first?.previousOwnerDeath { return death }
        return rest.lazy.compactMap(\.previousOwnerDeath).first
    }
}

/// Proof, inside a `withLock` scope, that the locks are held, and what acquiring them found.
/// Noncopyable: it cannot outlive the scope that releases the locks.
public struct LockGrant: ~Copyable {
    /// What acquiring each lock found, in the order they were taken.
    public let acquisitions: Acquisitions
    /// Release the locks marked inconsistent: the next holder is told the critical
    /// section did not complete (as if this holder had died).
    public var releaseInconsistent = false

    /// The first previous holder, among the locks taken, that did not finish.
    public var previousOwnerDeath: OwnerDeath? { acquisitions.previousOwnerDeath }

    public mutating func markInconsistent() { releaseInconsistent = true }
}
