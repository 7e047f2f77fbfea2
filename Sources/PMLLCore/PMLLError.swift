public import SystemPackage

/// Every error a caller of PMLL can cause or meet. Each case carries what a person needs
/// to act on it; ``exitCode`` maps it to the `pmll` command's documented exit status.
public enum PMLLError: Error, Equatable, Sendable {
    /// The pool path is empty, too long, or its directory cannot be used.
    case invalidPoolPath(path: String, reason: String)
    /// The pool does not exist and the caller asked not to create it.
    case poolNotFound(path: String)
    /// The operating system refused access (file mode, directory permissions).
    case permissionDenied(path: String, operation: String)
    /// The pool belongs to another user and was not created for a shared group.
    case foreignOwner(path: String, ownerUID: UInt32)
    /// The pool was attached read-only (``PoolOptions/readOnly``) and the operation writes.
    case readOnlyPool(path: String, operation: String)
    /// The pool's access policy does not let this user do this (`rule` names the policy rule
    /// that governs it; Docs/Security.md).
    case accessDenied(operation: String, rule: String)
    /// The file exists but is not a PMLL pool (wrong magic).
    case notAPool(path: String)
    /// The pool was written by a format this library does not know.
    case unsupportedFormatVersion(path: String, found: UInt32, supported: UInt32)
    /// The pool was written by a build that lays the file out differently (another layout
    /// signature, or the other byte order): it is refused, never reinterpreted.
    case incompatibleLayout(path: String, reason: String)
    /// The pool is truncated, its header checksum is wrong, or a table is damaged.
    case corruptPool(path: String, reason: String)
    /// A lock name is empty, longer than 255 bytes, or contains NUL.
    case invalidLockName(name: String, reason: String)
    /// The lock exists with another hierarchy level than the one requested.
    case levelMismatch(name: String, existing: LockLevel, requested: LockLevel)
    /// An acquisition would break the lock hierarchy (registry, package, filesystem, network).
    case hierarchyViolation(held: LockID, requested: LockID)
    /// The deadline passed while waiting; `holder` is who held the lock at that moment.
    case timeout(lock: String, holder: HolderInfo?)
    /// The wait was cancelled (Task cancellation, SIGINT at the CLI).
    case cancelled(lock: String)
    /// An operation's wait for its turn in a queue was cancelled; the ticket is void.
    case queueCancelled(queue: String, ticket: UInt64)
    /// A multi-lock call was given no locks.
    case noLocksGiven
    /// The pool was created without room for a state store (transactions, parked records and
    /// file-batch journals need one).
    case noStateStore(path: String)
    /// A file batch's root cannot be used (missing, not a directory, no permission).
    case invalidBatchRoot(path: String, reason: String)
    /// The file system holding the pool has no room for it (a sparse pool file whose blocks
    /// cannot be allocated): refused before a write through the mapping could fault.
    case noSpace(path: String, reason: String)
    /// A fixed-size table of the pool is full.
    case poolFull(table: String, capacity: Int)
    /// The pool's file would have to grow past its size limit (``PoolOptions/sizeLimit``) to
    /// hold what was asked; nothing was written.
    case sizeLimitReached(path: String, limit: Int, needed: Int)
    /// A configuration file (or a variable overriding it) is malformed or has a bad setting.
    /// `line` is the line of the value in the file (nil for a variable, or an unreadable file).
    case invalidConfiguration(file: String, line: Int?, key: String?, reason: String)
    /// A signature required before writing was missing, malformed, made with an untrusted
    /// key, or does not match: nothing was written.
    case signatureRejected(subject: String, reason: String)
    /// The pool's audit log fails verification: `problem` names the first bad record, file
    /// or missing range.
    case auditLogDamaged(path: String, problem: String)
    /// The pool has no audit ring (created with `auditRingSlots` 0, or by a pmll before audit logging).
    case noAuditLog(path: String)
    /// Processes have the pool open, and the operation needs it closed (restore).
    case poolInUse(path: String)
    /// The pool file at `path` was deleted, or replaced by another file renamed over it, while
    /// a process (`pid`, `command`) still has the former file open: a pool at that path now
    /// would not exclude that process, so none is created or attached until it has exited.
    case poolDeletedWhileOpen(path: String, pid: Int32, command: String)
    /// Bad value in the pool options (sizes, capacities).
    case invalidOptions(reason: String)
    /// A queue name is empty, too long (244 bytes at most) or contains NUL.
    case invalidQueueName(name: String, reason: String)
    /// The queue exists with other creation parameters (persistence).
    case queueMismatch(name: String, reason: String)
    /// An operation kind is empty, longer than 63 bytes or contains NUL.
    case invalidOperationKind(kind: String, reason: String)
    /// An operation's payload is over the limit (1024 bytes).
    case payloadTooLarge(bytes: Int, limit: Int)
    /// The deadline passed while the operation waited for its turn; `blockedBy` is the
    /// operation whose turn it was.
    case queueTimeout(queue: String, ticket: UInt64, blockedBy: OperationRecord?)
    /// A state-store key is empty, longer than 255 bytes or contains NUL.
    case invalidKey(key: String, reason: String)
    /// A state-store value is over the limit (65536 bytes).
    case valueTooLarge(key: String, bytes: Int, limit: Int)
    /// A record failed its checksum; its contents are not returned.
    case corruptRecord(key: String, reason: String)
    /// `transaction` was called inside another transaction on the same thread.
    case nestedTransaction
    /// A serializable transaction read `key` (or, for a prefix scan, `prefix*`), and another
    /// transaction committed a change to it before this one could commit: nothing of this
    /// one was written. `transaction` re-runs the body with backoff; this is thrown when
    /// `attempts` runs all conflicted.
    case transactionConflict(key: String, attempts: Int)
    /// A transaction's undo log would pass 4 GiB (`keys` changed, `bytes` of log against a
    /// `limit`): nothing was written; split it. (Smaller logs continue in an overflow area.)
    case transactionTooLarge(keys: Int, bytes: Int, limit: Int)
    /// A dead process's transaction could not be rolled back (its log is damaged).
    case transactionRecoveryFailed(reason: String)
    /// A file batch is invalid (entry `index`, or the batch as a whole when nil); nothing
    /// was touched.
    case invalidBatch(index: Int?, reason: String)
    /// A file batch failed while being applied (after validation); in atomic mode the tree
    /// was restored to what it was before the batch.
    case batchFailed(index: Int, path: String, errno: Errno)
    /// An atomic file batch failed and could not be fully rolled back (or its backups not
    /// removed after its commit): its journal is kept and each recovery tries again.
    case batchNeedsAttention(batch: String, root: String, reason: String)
    /// A system call failed in a way the caller did not cause directly.
    case systemCall(name: String, errno: Errno)
    /// A networked pool's service (an etcd cluster) could not be reached or refused the
    /// request; `reason` says which member and whether the request's outcome is unknown.
    case backendUnavailable(address: String, reason: String)
    /// A lock acquisition (fencing `token`) no longer holds its lock: its lease expired while
    /// the process waited, held or was paused, so another process may hold the lock now. A
    /// commit fenced by it wrote nothing.
    case lockLost(lock: String, token: Int64, reason: String)
}

extension PMLLError: CustomStringConvertible {
    public var description: String {
        switch self {
        case let .invalidPoolPath(path, reason): "invalid pool path '\(path)': \(reason)"
        case let .poolNotFound(path): "pool '\(path)' does not exist"
        case let .permissionDenied(path, operation): "permission denied: cannot \(operation) '\(path)'"
        case let .foreignOwner(path, uid): "pool '\(path)' belongs to uid \(uid) and is not group-shared"
        case let .readOnlyPool(path, operation): "pool '\(path)' is attached read-only: cannot \(operation)"
        case let .accessDenied(operation, rule): "permission denied by policy rule '\(rule)': \(operation)"
        case let .notAPool(path): "'\(path)' is not a PMLL pool"
        case let .unsupportedFormatVersion(path, found, supported):
            "pool '\(path)' has format version \(found); this pmll supports version \(supported)"
        case let .incompatibleLayout(path, reason): "pool '\(path)' is incompatible with this pmll: \(reason)"
        case let .noSpace(path, reason): "no space for pool '\(path)': \(reason)"
        case let .corruptPool(path, reason): "pool '\(path)' is corrupt: \(reason)"
        case let .invalidLockName(name, reason): "invalid lock name '\(name.debugDescription.dropFirst().dropLast())': \(reason)"
        case let .levelMismatch(name, existing, requested):
            "lock '\(name)' exists at level \(existing), not \(requested)"
        case let .hierarchyViolation(held, requested):
            "lock hierarchy violation: cannot take \(requested) while holding \(held)"
        case let .timeout(lock, holder):
            if let holder { "timed out waiting for lock '\(lock)' held by \(holder)" } else { "timed out waiting for lock '\(lock)'" }
        case let .cancelled(lock): "wait for lock '\(lock)' cancelled"
        case let .queueCancelled(queue, ticket): "wait in queue '\(queue)' (ticket \(ticket)) cancelled"
        case .noLocksGiven: "no locks given"
        case let .noStateStore(path): "pool '\(path)' has no state store (it was created with no room for one)"
        case let .invalidBatchRoot(path, reason): "batch root '\(path)': \(reason)"
        case let .poolFull(table, capacity): "pool full: the \(table) table has all \(capacity) entries in use"
        case let .sizeLimitReached(path, limit, needed): "pool full: '\(path)' would have to grow to \(needed) bytes, past its size limit of \(limit) bytes (sizeLimit)"
        case let .invalidConfiguration(file, line, key, reason):
            "configuration \(file)" + (line.map { ", line \($0)" } ?? "") + (key.map { ", key '\($0)'" } ?? "") + ": \(reason)"
        case let .signatureRejected(subject, reason): "signature of \(subject) rejected: \(reason)"
        case let .auditLogDamaged(path, problem): "audit log of pool '\(path)' fails verification: \(problem)"
        case let .noAuditLog(path): "pool '\(path)' has no audit log (created without an audit ring, or by a pmll before audit logging)"
        case let .poolInUse(path): "pool '\(path)' is open in other processes: stop them first (pmll status shows them)"
        case let .poolDeletedWhileOpen(path, pid, command):
            "pool '\(path)' was deleted or replaced while pid \(pid) (\(command)) still has its former file open; a pool at that path now would not exclude that process: stop it first"
        case let .invalidOptions(reason): "invalid pool options: \(reason)"
        case let .invalidQueueName(name, reason): "invalid queue name '\(name)': \(reason)"
        case let .queueMismatch(name, reason): "queue '\(name)' exists with other parameters: \(reason)"
        case let .invalidOperationKind(kind, reason): "invalid operation kind '\(kind)': \(reason)"
        case let .payloadTooLarge(bytes, limit): "operation payload of \(bytes) bytes is over the limit of \(limit)"
        case let .queueTimeout(queue, ticket, blockedBy):
            if let blockedBy {
                "timed out waiting in queue '\(queue)' (ticket \(ticket)) behind ticket \(blockedBy.ticket) '\(blockedBy.kind)' of pid \(blockedBy.ownerPid) (\(blockedBy.ownerCommand))"
            } else { "timed out waiting in queue '\(queue)' (ticket \(ticket))" }
        case let .invalidKey(key, reason): "invalid key '\(key)': \(reason)"
        case let .valueTooLarge(key, bytes, limit): "value of '\(key)' is \(bytes) bytes, over the limit of \(limit)"
        case let .corruptRecord(key, reason): "record '\(key)' is corrupt: \(reason)"
        case .nestedTransaction: "a transaction cannot be started inside another transaction"
        case let .transactionTooLarge(keys, bytes, limit):
            "transaction too large: changing \(keys) keys needs \(bytes) bytes of undo log, one log holds \(limit); nothing written, split it"
        case let .transactionConflict(key, attempts):
            "transaction conflict on '\(key)': another transaction changed it after this one read it (\(attempts) attempt\(attempts == 1 ? "" : "s"), nothing written; try again)"
        case let .transactionRecoveryFailed(reason): "rolling back a dead process's transaction failed: \(reason)"
        case let .invalidBatch(index, reason): index.map { "invalid batch entry \($0): \(reason)" } ?? "invalid batch: \(reason)"
        case let .batchFailed(index, path, errno): "batch entry \(index) ('\(path)') failed: \(errno.description) (errno \(errno.rawValue))"
        case let .batchNeedsAttention(batch, root, reason): "file batch \(batch) on '\(root)' needs attention: \(reason); `pmll recover` retries it"
        case let .systemCall(name, errno): "\(name) failed: \(errno.description) (errno \(errno.rawValue))"
        case let .backendUnavailable(address, reason): "pool '\(address)' is unavailable: \(reason)"
        case let .lockLost(lock, token, reason): "lock '\(lock)' lost (fencing token \(token)): \(reason)"
        }
    }
}

/// A lock as named in errors: its name and level.
public struct LockID: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public let level: LockLevel
    public init(name: String, level: LockLevel) {
        self.name = name
        self.level = level
    }
    public var description: String { "'\(name)' (level \(level.rawValue) \(level))" }
}
