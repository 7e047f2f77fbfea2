import PMLLCore
import PMLLFileBatches
import PMLLLocks
import PMLLQueues
import PMLLStore
public import SystemPackage

extension Pool {
    /// Opens (and, unless `options.create` is false, creates) the pool at `path`, or at
    /// `$PMLL_POOL`, or at the per-user default ``PoolPath/defaultPath``.
    ///
    /// The one place where the layers meet on open, in a fixed order (Docs/Architecture.md):
    /// 1. core attach; if nobody else has the pool open, under the INIT lock: lock words,
    ///    then queue heads, then the process table are reset;
    /// 2. the store: superblock read, repair hook installed, a dead committer's
    ///    transaction rolled back;
    /// 3. after a reset only (nobody is left to own them): half-applied file batches undone,
    ///    and temporaries of interrupted pool creations removed. Otherwise a batch is undone by
    ///    the next `apply` on its tree (under the tree's lock) or by `recover`, never behind
    ///    the back of a live holder.
    public static func open(path: String? = nil, options: PoolOptions = PoolOptions()) throws(PMLLError) -> Pool {
        let pool = try attach(path: path, options: options, steps: attachSteps)
        try pool.attachStore()
        pool.installPolicyLoader()
        try pool.storeReady()
        if pool.openReport.volatileReset != nil {
            _ = try? pool.fileBatchRecovery(ownersAreGone: true)
            PoolCreation.removeAbandonedTemporaries(of: pool.path, quietMemo: &pool.memory.header.pointee.quiet_directory_mtime_ns)
        }
        return pool
    }

    /// The layers' parts of the attach protocol: lock words, then queue heads.
    static var attachSteps: AttachSteps {
        AttachSteps(
            resetVolatile: { memory in
                LockWords.resetVolatile(memory)
                QueueRepair.reset(memory)
            },
            reclaimSlot: { memory, slot in LockDeath.sweep(memory, deadSlot: slot) })
    }

    /// ``open(path:options:)`` for a `FilePath`.
    public static func open(at path: FilePath, options: PoolOptions = PoolOptions()) throws(PMLLError) -> Pool {
        try open(path: path.string, options: options)
    }

    /// The pool file's path as a `FilePath`.
    public var filePath: FilePath { FilePath(path) }

    /// Opens the pool and runs recovery with `handlers` before returning it.
    public static func open(path: String? = nil, options: PoolOptions = PoolOptions(), recovering handlers: [String: RecoveryHandler]) async throws -> (Pool, RecoveryReport) {
        let pool = try Pool.open(path: path, options: options)
        return (pool, try await pool.recover(handlers: handlers))
    }

    /// Recovers what dead processes left behind, layer by layer: first their atomic file
    /// batches (rolled back through their journals), then, queue by queue, their abandoned
    /// operations, each as `policies` say (by default: the handler registered for its kind).
    /// With `dryRun`, nothing is done and each item says what would be.
    public func recover(handlers: [String: RecoveryHandler], policies: RecoveryPolicies = RecoveryPolicies(), dryRun: Bool = false,
                        timeout: Duration = .seconds(30)) async throws -> RecoveryReport {
        var report = RecoveryReport()
        if !dryRun { try access.check(self, .recover) }
        if !dryRun {
            let batches = try fileBatchRecovery()
            report.fileBatchesRolledBack = batches.handled
            report.fileBatchesNeedingAttention = batches.needsAttention
        }
        var handlers = handlers
        var policies = policies
        // A file batch run as a queue operation recovers through its own journal (above).
        handlers[HardenedQueue.fileBatchKind] = handlers[HardenedQueue.fileBatchKind] ?? { _ in }
        policies.byKind[HardenedQueue.fileBatchKind] = .handler
        report.items = try await recoverQueues(handlers: handlers, policies: policies, dryRun: dryRun, timeout: timeout)
        if !dryRun {
            audit(.recover, report.needsAttention ? .failed : .ok,
                  "\(report.items.count) abandoned operation(s) dealt with, \(report.fileBatchesRolledBack) file batch(es) rolled back, \(report.fileBatchesNeedingAttention.count) needing attention")
        }
        return report
    }
}

extension HardenedQueue {
    /// Applies a file batch as one operation of this queue (the design's
    /// `pmll_execute_batch_operation`): in order with every other operation on the resource,
    /// recorded, and, if atomic, rolled back by recovery should this process die.
    public func apply(_ batch: FileBatch, root: String, atomic: Bool = true, timeout: Duration?? = nil) async throws -> BatchReport {
        let pool = self.pool
        return try await execute(kind: Self.fileBatchKind, payload: Array(root.utf8.prefix(1024)), timeout: timeout, retry: RetryPolicy(maxRetries: 0)) { _ in
            try pool.apply(batch, root: root, atomic: atomic)
        }
    }
}

/// What a recovery run found and did.
public struct RecoveryReport: Codable, Sendable {
    public typealias Item = QueueRecoveryItem
    public typealias Outcome = QueueRecoveryItem.Outcome
    /// Abandoned queue operations, and what their handlers did.
    public var items: [Item] = []
    /// Atomic file batches of dead processes that were rolled back (or cleaned up).
    public var fileBatchesRolledBack = 0
    /// Atomic file batches whose rollback or clean-up failed again: their journals are kept.
    public var fileBatchesNeedingAttention: [BatchAttention] = []
    public init() {}

    /// Something is left for a person: a batch that is not rolled back.
    public var needsAttention: Bool { !fileBatchesNeedingAttention.isEmpty }
}
