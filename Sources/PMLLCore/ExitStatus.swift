
/// The `pmll` command's exit statuses (a contract: see Docs/CLI.md and `pmll --help`), for
/// both of its executables (`pmll`, and `pmll-etcd` for etcd pools): one mapping of errors.
package enum ExitStatus {
    package static let ok: Int32 = 0
    package static let usage: Int32 = 64          // bad arguments, lock name, level, hierarchy violation
    package static let badPool: Int32 = 65        // not a pool, unknown format version, corrupt
    package static let noPool: Int32 = 66         // pool missing (when not creating) or path unusable
    package static let unavailable: Int32 = 69    // a networked pool's service (etcd) cannot be reached
    package static let system: Int32 = 71         // unexpected system-call failure
    package static let poolFull: Int32 = 73       // a table of the pool is full
    package static let timeout: Int32 = 75        // lock wait timed out, or a transaction conflicted (try again)
    package static let permission: Int32 = 77     // permission denied, pool owned by another user
    package static let config: Int32 = 78         // a configuration file or variable is bad (EX_CONFIG)
    package static let cannotExecute: Int32 = 126 // COMMAND found but not executable
    package static let commandNotFound: Int32 = 127
    package static let interrupted: Int32 = 130   // SIGINT while waiting

    package static let summary = """
        Exit status: 0 ok; 64 usage error (arguments, lock name, level, hierarchy violation); \
        65 bad or corrupt pool; 66 pool missing or path unusable; 69 etcd pool unreachable; 71 system error; 73 pool full; \
        75 timeout, transaction conflict, pool in use (or deleted while in use) or lock lost (try again); 77 permission denied; 78 bad configuration; 126/127 COMMAND not executable/not found; \
        130 interrupted; otherwise COMMAND's own status (128+N if it died of signal N).
        """

    package static func code(for error: PMLLError) -> Int32 {
        switch error {
        case .invalidLockName, .levelMismatch, .hierarchyViolation, .invalidOptions,
             .invalidQueueName, .queueMismatch, .invalidOperationKind, .payloadTooLarge,
             .invalidKey, .valueTooLarge, .nestedTransaction, .invalidBatch, .noLocksGiven: usage
        case .notAPool, .unsupportedFormatVersion, .incompatibleLayout, .corruptPool, .corruptRecord, .transactionRecoveryFailed, .batchNeedsAttention,
             .auditLogDamaged, .noAuditLog: badPool
        case .poolNotFound, .invalidPoolPath: noPool
        case .permissionDenied, .foreignOwner, .signatureRejected, .readOnlyPool, .accessDenied: permission
        case .timeout, .queueTimeout, .transactionConflict, .poolInUse, .poolDeletedWhileOpen, .lockLost: timeout
        case .backendUnavailable: unavailable
        case .cancelled, .queueCancelled: interrupted
        case .poolFull, .sizeLimitReached, .noStateStore, .transactionTooLarge, .noSpace: poolFull
        case .invalidBatchRoot(_, let reason): reason.hasPrefix("permission") ? permission : noPool
        case .systemCall: system
        case .invalidConfiguration: config
        case .batchFailed(_, _, let errno): errno == .permissionDenied || errno == .readOnlyFileSystem ? permission : errno == .noSpace ? poolFull : system
        }
    }
}
