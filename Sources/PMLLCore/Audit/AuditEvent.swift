/// What an audit record reports. The raw values are stored in the pool's audit ring, so they
/// never change meaning; the names are what the audit files and `pmll audit show` print.
public enum AuditEvent: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    case queueSubmit = 1, queueStart, queueComplete, queueFail, queueRetry, queueAbandon, queueRecover
    /// A queued operation's turn passed over while its process was stopped (it submits again).
    case queuePass = 8
    case commit = 20, rollback, grow
    case batchApply = 30, batchRecover
    case ownerDeath = 40, lockTimeout, hierarchyViolation, readerDeath
    case accessDenied = 50, signatureRejected
    case check = 60, recover, reset, backup, restore, policy, seal
    /// Old audit files removed (`pmll audit prune`); a build from before it drains it as "unknown".
    case prune = 67
    /// A record lost: its writer died between taking its number and finishing it, or the slot
    /// was damaged. Written by the drainer, so the chain never breaks.
    case gap = 100

    public var description: String { "\(staticName)" }

    package var staticName: StaticString {
        switch self {
        case .queueSubmit: "queue.submit"
        case .queueStart: "queue.start"
        case .queueComplete: "queue.complete"
        case .queueFail: "queue.fail"
        case .queueRetry: "queue.retry"
        case .queueAbandon: "queue.abandon"
        case .queueRecover: "queue.recover"
        case .queuePass: "queue.pass"
        case .commit: "store.commit"
        case .rollback: "store.rollback"
        case .grow: "store.grow"
        case .batchApply: "batch.apply"
        case .batchRecover: "batch.recover"
        case .ownerDeath: "lock.owner-death"
        case .lockTimeout: "lock.timeout"
        case .hierarchyViolation: "lock.hierarchy-violation"
        case .readerDeath: "lock.reader-death"
        case .accessDenied: "access.denied"
        case .signatureRejected: "signature.rejected"
        case .check: "admin.check"
        case .recover: "admin.recover"
        case .reset: "admin.reset"
        case .backup: "admin.backup"
        case .restore: "admin.restore"
        case .policy: "admin.policy"
        case .seal: "admin.seal"
        case .prune: "admin.prune"
        case .gap: "gap"
        }
    }

    public init?(name: String) {
        guard let found = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = found
    }
}

/// How the reported action ended.
public enum AuditOutcome: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    case ok = 0, failed, denied, lost

    public var description: String { "\(staticName)" }

    package var staticName: StaticString {
        switch self {
        case .ok: "ok"
        case .failed: "failed"
        case .denied: "denied"
        case .lost: "lost"
        }
    }

    public init?(name: String) {
        guard let found = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = found
    }
}
