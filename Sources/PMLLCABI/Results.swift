import CPMLLABI
import PMLL

/// The C interface's one place that turns failures into result codes and the thread's
/// last-error line (the same text the `pmll` command prints).
enum CResult {
    static let success = CPM_RESULT_SUCCESS


    /// Records `message` as this thread's last error and returns `result`.
    static func fail(_ result: CPM_Result, _ message: String) -> CPM_Result {
        pmll_abi_set_error("pmll: " + message)
        return result
    }

    static func fail(_ error: PMLLError) -> CPM_Result { fail(code(for: error), error.description) }

    static func invalid(_ message: String) -> CPM_Result { fail(CPM_RESULT_ERROR_INVALID_ARGS, message) }

    static func code(for error: PMLLError) -> CPM_Result {
        switch error {
        case .invalidLockName, .levelMismatch, .invalidOptions, .invalidQueueName, .queueMismatch,
             .invalidOperationKind, .invalidKey, .nestedTransaction, .invalidBatch, .noLocksGiven, .invalidPoolPath,
             .invalidConfiguration:
            CPM_RESULT_ERROR_INVALID_ARGS
        case .valueTooLarge, .payloadTooLarge, .transactionTooLarge: pmll_abi_too_large
        case .hierarchyViolation: pmll_abi_hierarchy_violation
        case .timeout, .queueTimeout, .poolInUse, .poolDeletedWhileOpen: pmll_abi_lock_timeout
        case .transactionConflict: pmll_abi_conflict
        case .cancelled, .queueCancelled: pmll_abi_cancelled
        case .notAPool, .unsupportedFormatVersion, .incompatibleLayout, .corruptPool, .corruptRecord,
             .transactionRecoveryFailed, .batchNeedsAttention, .auditLogDamaged:
            pmll_abi_pool_corrupt
        case .poolNotFound, .noAuditLog: pmll_abi_not_found
        case .permissionDenied, .foreignOwner, .signatureRejected, .readOnlyPool, .accessDenied: pmll_abi_permission
        case .poolFull, .sizeLimitReached, .noStateStore, .noSpace: pmll_abi_pool_full
        case .invalidBatchRoot, .batchFailed: CPM_RESULT_ERROR_FILE_OPERATION
        case .systemCall, .backendUnavailable: pmll_abi_system
        case .lockLost: pmll_abi_not_held
        }
    }

    /// Runs `body`; a failure inside it has already recorded its message.
    @inline(__always)
    static func run(_ body: () throws(CFailure) -> CPM_Result) -> CPM_Result {
        do { return try body() } catch { return error.result }
    }

    /// Runs a library call, recording a thrown error as the thread's last error.
    @inline(__always)
    static func library<T>(_ body: () throws(PMLLError) -> T) throws(CFailure) -> T {
        do { return try body() } catch { throw CFailure(result: fail(error)) }
    }

    /// A C string argument as a String: NULL and invalid UTF-8 are the caller's error.
    static func string(_ pointer: UnsafePointer<CChar>?, _ what: String) throws(CFailure) -> String {
        guard let pointer else { throw CFailure(result: invalid("\(what) is NULL")) }
        guard let s = String(validatingCString: pointer) else { throw CFailure(result: invalid("\(what) is not valid UTF-8")) }
        return s
    }

    static func argument(_ ok: Bool, _ message: @autoclosure () -> String) throws(CFailure) {
        if !ok { throw CFailure(result: invalid(message())) }
    }
}

/// A failure of a C entry point whose message is already recorded.
struct CFailure: Error {
    let result: CPM_Result
}

/// Deadlines of the C interface: CLOCK_MONOTONIC nanoseconds, as the lock protocol's.
enum CDeadline {
    static func after(milliseconds: UInt32) -> Int64 {
        Pool.deadline(after: .milliseconds(milliseconds))
    }
}
