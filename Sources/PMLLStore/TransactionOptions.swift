public import PMLLCore

/// How a transaction is isolated from transactions running at the same time.
public enum TransactionIsolation: Sendable, Equatable {
    /// Every committed value the body read (or found missing), and every key list it took,
    /// is checked at commit, under the store lock: if another transaction changed one since,
    /// nothing is written and the body runs again. The result is as if the transactions had
    /// run one at a time (Docs/Transactions.md).
    case serializable
    /// No read tracking: the commit writes whatever the body decided, even if what it read
    /// has changed since. For bulk writers that hold their own lock over the data.
    case none
}

/// Per-call settings of ``Pool/transaction(options:_:)``.
public struct TransactionOptions: Sendable, Equatable {
    public var isolation: TransactionIsolation
    /// Backoff and the number of re-runs after a conflict (then the conflict is thrown).
    /// Conflicts resolve in microseconds, so the delays are far shorter than a queue's.
    public var retry: RetryPolicy

    public static let defaultRetry = RetryPolicy(maxRetries: 16, baseDelay: .microseconds(20), maxDelay: .milliseconds(20))

    public init(isolation: TransactionIsolation = .serializable, retry: RetryPolicy = TransactionOptions.defaultRetry) {
        self.isolation = isolation
        self.retry = retry
    }
}

/// Store-wide transaction counters since the pool was created (`pmll status`).
public struct TransactionStatistics: Codable, Sendable, Equatable {
    /// Commits that changed the store.
    public let commits: UInt64
    /// Serializable transactions that found a value they had read changed by another.
    public let conflicts: UInt64
    /// Bodies re-run after a conflict.
    public let retries: UInt64
    /// Interrupted commits rolled back (by recovery after a crash, or after an error).
    public let rollbacks: UInt64
    /// Conflicts not retried: the transaction gave up and threw the conflict.
    public var failures: UInt64 { conflicts >= retries ? conflicts - retries : 0 }

    public init(commits: UInt64, conflicts: UInt64, retries: UInt64, rollbacks: UInt64 = 0) {
        self.commits = commits
        self.conflicts = conflicts
        self.retries = retries
        self.rollbacks = rollbacks
    }
}
