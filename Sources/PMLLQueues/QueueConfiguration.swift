public import PMLLCore
import PMLLLocks
import PMLLStore

/// Defaults for hardened queues, modelled on the design's `CPM_Config`
/// (`timeout_ms = 30000`, `max_retries = 3`).
public struct QueueConfiguration: Sendable, Equatable {
    /// How long `execute` waits for its turn (nil: no limit).
    public var timeout: Duration? = .seconds(30)
    /// Retry policy for operations that throw a ``RetryableError``.
    public var retry = RetryPolicy()

    public init() {}
}

/// Thrown by an operation to ask for a retry with backoff (up to the policy's limit).
public struct RetryableError: Error {
    public let underlying: any Error
    public init(_ underlying: any Error) { self.underlying = underlying }
}
