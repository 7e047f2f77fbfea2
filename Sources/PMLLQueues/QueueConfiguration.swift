import PMLLCore
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

/// Exponential backoff with full jitter: attempt n (1-based) sleeps a random time in
/// `0...min(maxDelay, baseDelay * 2^(n-1))` before retrying.
public struct RetryPolicy: Sendable, Equatable {
    public var maxRetries = 3
    public var baseDelay: Duration = .milliseconds(10)
    public var maxDelay: Duration = .seconds(1)

    public init(maxRetries: Int = 3, baseDelay: Duration = .milliseconds(10), maxDelay: Duration = .seconds(1)) {
        self.maxRetries = maxRetries
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
    }

    /// A random delay before retry number `retry` (1-based), within its cap.
    public func delay(beforeRetry retry: Int) -> Duration {
        let exponent = min(max(retry - 1, 0), 30)
        let cap = min(maxDelay.nanoseconds, baseDelay.nanoseconds.multipliedReportingOverflow(by: 1 << exponent).overflow ? maxDelay.nanoseconds : baseDelay.nanoseconds << exponent)
        return .nanoseconds(cap > 0 ? Int64.random(in: 0...cap) : 0)
    }
}

/// Thrown by an operation to ask for a retry with backoff (up to the policy's limit).
public struct RetryableError: Error {
    public let underlying: any Error
    public init(_ underlying: any Error) { self.underlying = underlying }
}
