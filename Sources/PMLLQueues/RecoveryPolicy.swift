/// What recovery does with an operation abandoned by a dead process.
public enum RecoveryAction: String, Codable, Sendable, CaseIterable {
    /// Run the handler registered for its kind (the repair); with none, leave it for a process
    /// that has one.
    case handler
    /// Run it again: the kind's handler runs as a new operation of the queue, in FIFO order.
    case retry
    /// Mark it recovered and do nothing (it is reported).
    case abandon
    /// Set it aside for a person (`pmll recover --quarantined`), and mark it recovered so that it
    /// is not met again.
    case quarantine
}

/// Recovery policies per queue and per operation kind (the kind's policy wins over the
/// queue's, which wins over the default). A handler or a retry that fails `maxAttempts` times
/// over successive recoveries quarantines the operation.
public struct RecoveryPolicies: Sendable, Equatable {
    public var defaultAction: RecoveryAction = .handler
    public var byQueue: [String: RecoveryAction] = [:]
    public var byKind: [String: RecoveryAction] = [:]
    public var maxAttempts = 3

    public init() {}

    public func action(queue: String, kind: String) -> RecoveryAction {
        byKind[kind] ?? byQueue[queue] ?? defaultAction
    }
}
