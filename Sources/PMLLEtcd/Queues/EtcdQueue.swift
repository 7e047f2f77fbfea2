import Foundation
public import PMLLCore
import PMLLQueues

/// A hardened queue of an etcd pool (Docs/Etcd.md "Queues"): operations run one at a time in
/// submission order across every process of every machine, each recorded under
/// `PREFIX/queue/NAME/TICKET`, and an operation whose process died is found abandoned and
/// handed to recovery.
///
/// The turn is an etcd lock of the queue (`pmll:queue/NAME`, outside the hierarchy, as the
/// local library's own locks): its FIFO waiters are the queue, its fencing token is the
/// operation's ticket, and every change of a record is fenced by it, so a process that lost
/// its turn (paused past its lease) cannot change a record.
public struct EtcdQueue: Sendable {
    public let pool: EtcdPool
    public let name: String

    var turn: LockID { LockID(name: "pmll:queue/" + name, level: .network) }

    /// Runs `body` as one operation of kind `kind` when its turn comes (at most `timeout`
    /// of waiting; nil: no limit). The record says `running` while it runs, then `completed`
    /// or `failed` (with the error). An operation of a process that died while it ran is
    /// marked `abandoned` by the next operation of the queue (or by ``EtcdPool/recover(handlers:)``).
    public func execute<R>(kind: String, payload: [UInt8] = [], timeout: Duration? = nil,
                           _ body: (EtcdOperationRecord) async throws -> R) async throws -> R {
        try QueueEngine.validate(kind: kind, payload: payload)
        let pool = self.pool, turn = self.turn
        var grant = try await onEtcdExecutor { () async throws(PMLLError) in try await pool.acquire(turn, timeout: timeout) }
        let record = EtcdOperationRecord(queue: name, ticket: grant.fencingToken, kind: kind, payload: payload, state: .running,
                                         participant: pool.identity, lease: pool.session.leaseID)
        let result: R
        do {
            try await pool.writeRecord(record, fence: grant.fence, alsoAbandoning: grant.previousOwnerDeath.map { _ in () } != nil)
            result = try await body(record)
        } catch {
            var failed = record
            failed.state = .failed
            failed.error = "\(error)"
            failed.finished = EtcdOperationRecord.now()
            if (try? await pool.writeRecord(failed, fence: grant.fence, alsoAbandoning: false)) == nil { grant.markInconsistent() }
            let held = grant
            try? await onEtcdExecutor { () async throws(PMLLError) in try await pool.release(held) }
            throw error
        }
        var completed = record
        completed.state = .completed
        completed.finished = EtcdOperationRecord.now()
        try await pool.writeRecord(completed, fence: grant.fence, alsoAbandoning: false)
        let held = grant
        try await onEtcdExecutor { () async throws(PMLLError) in try await pool.release(held) }
        return result
    }

    /// The queue's records, oldest first (at most `limit`, the newest ones).
    public func records(limit: Int = 1000) async throws(PMLLError) -> [EtcdOperationRecord] {
        let prefix = pool.keys.queueRecords(name)
        let answer = try await pool.gateway.call("/v3/kv/range", RangeRequest(
            key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix)), limit: EtcdInt(Int64(limit)),
            sort_order: "DESCEND", sort_target: "KEY"), as: RangeResponse.self)
        return answer.all.compactMap { try? JSONDecoder().decode(EtcdOperationRecord.self, from: Data($0.valueBytes)) }.reversed()
    }
}

/// One operation of an etcd queue, as recorded.
public struct EtcdOperationRecord: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        case running, completed, failed
        /// Its process died while it ran (the turn's lease expired).
        case abandoned
        /// A recovery handler dealt with the abandoned operation.
        case recovered
    }
    public var queue: String
    public var ticket: Int64
    public var kind: String
    public var payload: [UInt8]
    public var state: State
    public var pid: Int32
    public var host: String
    public var command: String
    public var lease: Int64
    public var started: Int64
    public var finished: Int64?
    public var error: String?

    init(queue: String, ticket: Int64, kind: String, payload: [UInt8], state: State, participant: ParticipantIdentity, lease: Int64) {
        self.queue = queue
        self.ticket = ticket
        self.kind = kind
        self.payload = payload
        self.state = state
        pid = participant.pid
        host = participant.host
        command = participant.command
        self.lease = lease
        started = Self.now()
    }

    static func now() -> Int64 { Clock.realtimeNanoseconds }
}

extension EtcdPool {
    /// The queue `name` (1–244 bytes, no NUL). Queues need no creation.
    public func queue(named name: String) throws(PMLLError) -> EtcdQueue {
        try QueueTable.validate(name: name)
        return EtcdQueue(pool: self, name: name)
    }

    /// Writes `record` fenced by the turn; when the previous turn's holder died, its
    /// `running` record is marked `abandoned` in the same transaction.
    func writeRecord(_ record: EtcdOperationRecord, fence: EtcdFence, alsoAbandoning: Bool) async throws(PMLLError) {
        var ops: [RequestOp] = []
        var compare = [Compare.createRevision(fence.waiterKey ?? [], equals: fence.token)]
        if alsoAbandoning, let dead = try await runningRecords(of: record.queue).last(where: { $0.record.state == .running && $0.record.ticket < record.ticket }) {
            var abandoned = dead.record
            abandoned.state = .abandoned
            compare.append(.modRevision(dead.key, equals: dead.modRevision))
            ops.append(.put(PutRequest(key: EtcdBytes(dead.key), value: EtcdBytes(Self.encode(abandoned)))))
        }
        ops.append(.put(PutRequest(key: EtcdBytes(keys.queueRecord(record.queue, ticket: record.ticket)), value: EtcdBytes(Self.encode(record)))))
        let answer = try await gateway.call("/v3/kv/txn", TxnRequest(compare: compare, success: ops, failure: []), as: TxnResponse.self)
        guard answer.didSucceed else {
            throw .lockLost(lock: "pmll:queue/" + record.queue, token: fence.token, reason: "the operation's turn ended (its lease expired, or a record changed under it); its record was not written")
        }
    }

    static func encode(_ record: EtcdOperationRecord) -> [UInt8] { (try? Array(JSONEncoder().encode(record))) ?? [] }

    struct StoredRecord { var key: [UInt8]; var modRevision: Int64; var record: EtcdOperationRecord }

    func runningRecords(of queue: String?) async throws(PMLLError) -> [StoredRecord] {
        let prefix = queue.map { keys.queueRecords($0) } ?? keys.queueRoot
        let answer = try await gateway.call("/v3/kv/range", RangeRequest(key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix))), as: RangeResponse.self)
        return answer.all.compactMap { kv in
            guard let record = try? JSONDecoder().decode(EtcdOperationRecord.self, from: Data(kv.valueBytes)),
                  record.state == .running || record.state == .abandoned else { return nil }
            return StoredRecord(key: kv.key.bytes, modRevision: kv.modRevision, record: record)
        }
    }
}
