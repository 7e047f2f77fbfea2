/// Proof, inside a `withLock` scope, that the locks are held, and what acquiring them found.
/// Noncopyable: it cannot outlive the scope that releases the locks.
public struct LockGrant: ~Copyable {
    /// The locks held, in the order they were taken.
    public let locks: [LockID]
    /// One entry per lock, in the same order.
    public let acquisitions: [Acquisition]
    /// Release the locks marked inconsistent: the next holder is told the critical
    /// section did not complete (as if this holder had died).
    public var releaseInconsistent = false

    /// The first previous holder, among the locks taken, that did not finish.
    public var previousOwnerDeath: OwnerDeath? {
        acquisitions.lazy.compactMap(\.previousOwnerDeath).first
    }

    public mutating func markInconsistent() { releaseInconsistent = true }
}
