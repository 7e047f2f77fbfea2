import Synchronization

/// A flag that stops a blocking wait. Waiters check it at least every owner-check
/// interval; ``cancel()`` callers also wake the lock's sleepers so the check is prompt.
public final class Cancellation: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public var isCancelled: Bool { flag.load(ordering: .acquiring) }
    public func cancel() { flag.store(true, ordering: .releasing) }
}
