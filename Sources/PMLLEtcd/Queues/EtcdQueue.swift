import Foundation
public import PMLLCore
public import PMLLQueues

/// A hardened queue of an etcd pool (Docs/Etcd.md "Queues"): operations run one at a time in
/// submission order across every process of every machine, each recorded under
/// `PREFIX/queue/NAME/TICKET`, retried with backoff when they ask for it, and an operation
/// whose process died is found abandoned and handed to recovery. The same calls as the
/// local ``HardenedQueue``.
///
/// The turn is an etcd lock of the queue (`pmll:queue/NAME`, outside the hierarchy, as the
/// local library's own locks): its FIFO waiters are the queue, its fencing token is the
/// operation's ticket, and every change of a record is fenced by it, so a process that lost
/// its turn (paused past its lease) cannot change a record.
public struct EtcdQueue: Sendable {
    public let pool: EtcdPool
    public let name: String
    public let configuration: QueueConfiguration
    /// Settled records (completed, failed, recovered) kept per queue; older ones are folded
    /// into the queue's totals and deleted, so etcd's store does not grow without bound.
    public let keepRecords: Int

    var turnID: LockID { LockID(name: "pmll:queue/" + name, level: .network) }

    /// Runs `operation` as one operation of kind `kind` when its turn comes (at most
    /// `timeout` of waiting; nil: the configuration's; `.some(nil)`: no limit). The record
    /// says `running` while it runs, then `completed` or `failed` (with the error). An
    /// operation that throws ``RetryableError`` is tried again after a backoff, in the same
    /// turn, up to the retry policy's limit; `onError` sees the final error. An operation
    /// whose process died is marked `abandoned` by the next operation of the queue (or by
    /// ``EtcdPool/recover(handlers:policies:dryRun:)``).
    public func execute<R: Sendable>(kind: String, payload: [UInt8] = [], timeout: Duration?? = nil, retry: RetryPolicy? = nil,
                                     onError: (@Sendable (any Error) -> Void)? = nil,
                                     _ operation: (OperationInfo) async throws -> R) async throws -> R {
        try QueueEngine.validate(kind: kind, payload: payload)
        let policy = retry ?? configuration.retry
        return try await withTurn(timeout: timeout ?? configuration.timeout) { turn in
            try await run(&turn, index: 0, kind: kind, payload: payload, retry: policy, onError: onError, operation)
        }
    }

    /// Runs the operations in one turn, one after another with nothing of another process
    /// in between. Each one's outcome is reported; a failed one does not stop the rest, but
    /// a lost turn does (the rest fail with ``PMLLError/lockLost(lock:token:reason:)`` without
    /// running). Their records share the turn's ticket and carry their index.
    public func executeBatch<R: Sendable>(_ operations: [BatchOperation<R>], timeout: Duration?? = nil, retry: RetryPolicy? = nil) async throws -> [Result<R, any Error>] {
        for op in operations { try QueueEngine.validate(kind: op.kind, payload: op.payload) }
        guard !operations.isEmpty else { return [] }
        let policy = retry ?? configuration.retry
        return try await withTurn(timeout: timeout ?? configuration.timeout) { turn in
            var results: [Result<R, any Error>] = []
            for (index, op) in operations.enumerated() {
                if let lost = turn.lost {
                    results.append(.failure(lost))
                    continue
                }
                do {
                    results.append(.success(try await run(&turn, index: index, kind: op.kind, payload: op.payload, retry: policy, onError: nil, op.body)))
                } catch {
                    results.append(.failure(error))
                }
            }
            return results
        }
    }

    /// The queue's records, oldest first (at most `limit`, the newest ones).
    public func records(limit: Int = 1000) async throws(PMLLError) -> [EtcdOperationRecord] {
        let prefix = pool.keys.queueRecords(name)
        let answer = try await pool.gateway.call("/v3/kv/range", RangeRequest(
            key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix)), limit: EtcdInt(Int64(limit)),
            sort_order: "DESCEND", sort_target: "KEY"), as: RangeResponse.self)
        return answer.all.compactMap { try? JSONDecoder().decode(EtcdOperationRecord.self, from: Data($0.valueBytes)) }.reversed()
    }

    // MARK: - One turn

    /// What a turn knows while its operations run.
    struct Turn {
        var grant: EtcdLockGrant
        let submitted: Int64
        /// The previous turn's holder died: its running record is marked abandoned with the
        /// first record of this turn.
        var abandonPredecessor: Bool
        /// The turn ended under it (a fenced write was refused): nothing more may run.
        var lost: PMLLError?
        /// Records of the queue after this turn's last write.
        var recordCount: Int64 = 0
    }

    private func withTurn<T>(timeout: Duration?, _ body: (inout Turn) async throws -> T) async throws -> T {
        let pool = self.pool, id = turnID
        let submitted = EtcdOperationRecord.now()
        let grant = try await onEtcdExecutor { () async throws(PMLLError) in try await pool.acquire(id, timeout: timeout) }
        var turn = Turn(grant: grant, submitted: submitted, abandonPredecessor: grant.previousOwnerDeath != nil)
        let outcome: Result<T, any Error>
        do { outcome = .success(try await body(&turn)) } catch { outcome = .failure(error) }
        // The records say what happened; a release refused because the lease ran out after
        // the last fenced write changes nothing of it.
        let held = turn.grant
        _ = try? await onEtcdExecutor { () async throws(PMLLError) in try await pool.release(held) }
        if turn.recordCount > Int64(keepRecords + Self.trimSlack) { await pool.trimRecords(of: name, keeping: keepRecords) }
        return try outcome.get()
    }

    /// Records beyond `keepRecords` before a trim runs, so trims come in batches.
    package static let trimSlack = 64

    private func run<R>(_ turn: inout Turn, index: Int, kind: String, payload: [UInt8], retry: RetryPolicy,
                        onError: (@Sendable (any Error) -> Void)?, _ operation: (OperationInfo) async throws -> R) async throws -> R {
        var record = EtcdOperationRecord(queue: name, ticket: turn.grant.fencingToken, index: index, kind: kind, payload: payload,
                                         participant: pool.identity, lease: pool.session.leaseID, submitted: turn.submitted)
        do { try await write(record, in: &turn) } catch {
            // It did not run; whether its `running` record exists is unknown (the answer may
            // have been lost): the next holder is told, and marks it abandoned if it does.
            turn.grant.markInconsistent()
            throw error
        }
        while true {
            let attempt = record.attempts ?? 1
            let result: R
            do {
                result = try await operation(OperationInfo(queue: name, ticket: UInt64(record.ticket), kind: kind, attempt: attempt, payload: payload))
            } catch let error as RetryableError where attempt <= retry.maxRetries {
                record.attempts = attempt + 1
                record.error = "\(error.underlying)"
                try await write(record, in: &turn)
                do {
                    try await Task.sleep(for: retry.delay(beforeRetry: attempt))
                } catch {
                    try? await settle(&record, as: "cancelled while backing off", in: &turn)
                    throw error
                }
                continue
            } catch {
                let final = (error as? RetryableError)?.underlying ?? error
                try? await settle(&record, as: "\(final)", in: &turn)
                onError?(final)
                throw final
            }
            record.state = .completed
            record.finished = EtcdOperationRecord.now()
            do { try await write(record, in: &turn) } catch {
                // It ran, but its record still says running: the next holder is told, and
                // marks it abandoned for recovery to look at.
                turn.grant.markInconsistent()
                throw error
            }
            return result
        }
    }

    private func settle(_ record: inout EtcdOperationRecord, as error: String, in turn: inout Turn) async throws {
        record.state = .failed
        record.error = error
        record.finished = EtcdOperationRecord.now()
        do { try await write(record, in: &turn) } catch {
            // Not recorded as failed: the next holder is told, as after a death.
            turn.grant.markInconsistent()
            throw error
        }
    }

    /// Writes `record` fenced by the turn; a refused write ends the turn.
    private func write(_ record: EtcdOperationRecord, in turn: inout Turn) async throws(PMLLError) {
        if let lost = turn.lost { throw lost }
        do {
            turn.recordCount = try await pool.writeRecord(record, fence: turn.grant.fence, abandoningPredecessor: turn.abandonPredecessor)
            turn.abandonPredecessor = false
        } catch {
            if case .lockLost = error { turn.lost = error }
            throw error
        }
    }
}

extension EtcdPool {
    /// The queue `name` (1–244 bytes, no NUL). Queues need no creation. `keepRecords`
    /// settled records are kept (at least 1); older ones count only in the statistics.
    public func queue(named name: String, configuration: QueueConfiguration = QueueConfiguration(), keepRecords: Int = 1000) throws(PMLLError) -> EtcdQueue {
        try QueueTable.validate(name: name)
        return EtcdQueue(pool: self, name: name, configuration: configuration, keepRecords: max(1, keepRecords))
    }
}
