import Synchronization

/// A flag that stops a blocking wait. Waiters check it at least every owner-check
/// interval; ``cancel()`` callers also wake the lock's sleepers so the check is prompt.
public final class Cancellation: Sendable {
    private let flag = Atomic<Bool>(false)
    private let willWait: Mutex<(@Sendable (Cancellation) -> Void)?>

    public init() { willWait = Mutex(nil) }

    /// `willWait` runs once, on the acquiring thread, just before the first wait this
    /// cancellation can stop, and never when the lock is taken on its uncontended path: what
    /// would cancel the wait (a signal watch, a timer naming the holder) is set up only when
    /// there is a wait, which keeps short-lived processes that find the lock free from
    /// starting threads for them.
    public init(willWait: @escaping @Sendable (Cancellation) -> Void) { self.willWait = Mutex(willWait) }

    public var isCancelled: Bool { flag.load(ordering: .acquiring) }
    public func cancel() { flag.store(true, ordering: .releasing) }

    /// Called by the lock paths when they are about to wait.
    package func waitBegins() {
        guard let hook = willWait.withLock({ h -> (@Sendable (Cancellation) -> Void)? in defer { h = nil }; return h }) else { return }
        hook(self)
    }
}
