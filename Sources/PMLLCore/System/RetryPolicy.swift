#if canImport(Glibc)
import Glibc
#endif

/// Exponential backoff with full jitter: attempt n (1-based) sleeps a random time in
/// `0...min(maxDelay, baseDelay * 2^(n-1))` before retrying. Used by hardened queues (for
/// operations that throw a retryable error) and by transactions (after a conflict).
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

extension Duration {
    /// Sleeps the calling thread (transactions are synchronous; queues use `Task.sleep`).
    package func sleepThread() {
        let ns = max(nanoseconds, 0)
        guard ns > 0 else { return }
        var request = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }
}
