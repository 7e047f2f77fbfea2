import Foundation
import PMLLCore

extension EtcdPool {
    /// Writes `record` fenced by the turn; when the previous turn's holder died, the
    /// `running` records of earlier turns are marked `abandoned` in the same transaction.
    /// Returns how many records the queue has after the write (counted in the same
    /// transaction, for trimming).
    func writeRecord(_ record: EtcdOperationRecord, fence: EtcdFence, abandoningPredecessor: Bool) async throws(PMLLError) -> Int64 {
        // A refusal with the turn still ours means a record compared on changed under us (a
        // recovery marked it, or a first attempt whose answer was lost already applied this
        // one): read again and write again.
        for _ in 0..<3 {
            if let count = try await writeRecordOnce(record, fence: fence, abandoningPredecessor: abandoningPredecessor) { return count }
            let own = try await gateway.call("/v3/kv/range", RangeRequest(key: EtcdBytes(fence.waiterKey ?? []), keys_only: true), as: RangeResponse.self)
            if own.all.first?.createRevision != fence.token { break }
        }
        throw .lockLost(lock: "pmll:queue/" + record.queue, token: fence.token,
                        reason: "the operation's turn ended (its lease expired); its record was not written")
    }

    /// One attempt; nil if a compare failed.
    private func writeRecordOnce(_ record: EtcdOperationRecord, fence: EtcdFence, abandoningPredecessor: Bool) async throws(PMLLError) -> Int64? {
        var ops: [RequestOp] = []
        var compare = [Compare.createRevision(fence.waiterKey ?? [], equals: fence.token)]
        if abandoningPredecessor {
            // This turn holds the queue, so every earlier turn is over: a record still
            // running belongs to a process that died (or lost its lease) during it.
            for dead in try await unsettledRecords(of: record.queue) where dead.record.state == .running && dead.record.ticket < record.ticket {
                var abandoned = dead.record
                abandoned.state = .abandoned
                compare.append(.modRevision(dead.key, equals: dead.modRevision))
                ops.append(.put(PutRequest(key: EtcdBytes(dead.key), value: EtcdBytes(Self.encode(abandoned)))))
            }
        }
        let prefix = keys.queueRecords(record.queue)
        ops.append(.put(PutRequest(key: EtcdBytes(keys.queueRecord(record.queue, ticket: record.ticket, index: record.index ?? 0)),
                                   value: EtcdBytes(Self.encode(record)))))
        ops.append(.range(RangeRequest(key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix)), count_only: true)))
        let answer = try await gateway.call("/v3/kv/txn", TxnRequest(compare: compare, success: ops, failure: []), as: TxnResponse.self)
        guard answer.didSucceed else { return nil }
        return answer.range(ops.count - 1)?.count?.value ?? 0
    }

    static func encode(_ record: EtcdOperationRecord) -> [UInt8] { (try? Array(JSONEncoder().encode(record))) ?? [] }

    struct StoredRecord { var key: [UInt8]; var modRevision: Int64; var record: EtcdOperationRecord }

    /// The records of `queue` (nil: of every queue) that are running, abandoned or quarantined.
    func unsettledRecords(of queue: String?) async throws(PMLLError) -> [StoredRecord] {
        let prefix = queue.map { keys.queueRecords($0) } ?? keys.queueRoot
        let answer = try await gateway.call("/v3/kv/range", RangeRequest(key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix))), as: RangeResponse.self)
        return answer.all.compactMap { kv in
            guard let stored = StoredRecord(kv), !stored.record.isSettled else { return nil }
            return stored
        }
    }

    /// Folds the oldest settled records of `queue` beyond the newest `keep` into the
    /// queue's tally and deletes them, in one transaction per batch compared on the tally
    /// and on every record (a concurrent trim or recovery makes it give up; the next turn
    /// tries again). Running and abandoned records are never trimmed. Best effort: errors
    /// leave everything as it was.
    func trimRecords(of queue: String, keeping keep: Int) async {
        let prefix = keys.queueRecords(queue), tallyKey = keys.queueTally(queue)
        // One snapshot: the tally and the records, oldest first.
        guard let snapshot = try? await gateway.call("/v3/kv/txn", TxnRequest(compare: [], success: [
            .range(RangeRequest(key: EtcdBytes(tallyKey))),
            .range(RangeRequest(key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix)), sort_order: "ASCEND", sort_target: "KEY")),
        ], failure: []), as: TxnResponse.self) else { return }
        let tallyKV = snapshot.range(0)?.all.first
        var tally = tallyKV.flatMap { try? JSONDecoder().decode(EtcdQueueTally.self, from: Data($0.valueBytes)) } ?? EtcdQueueTally()
        let records = (snapshot.range(1)?.all ?? []).compactMap(StoredRecord.init)
        let excess = records.count - keep
        guard excess > 0 else { return }
        // etcd allows 128 operations per transaction by default: 1 tally put + 100 deletes.
        // The oldest settled ones, wherever they are: abandoned records waiting for recovery
        // at the front must not stop the trimming behind them.
        let victims = records.lazy.filter { $0.record.isSettled }.prefix(min(excess, 100))
        guard !victims.isEmpty else { return }
        var compare = [tallyKV.map { Compare.modRevision(tallyKey, equals: $0.modRevision) } ?? .createRevision(tallyKey, equals: 0)]
        var ops: [RequestOp] = []
        for victim in victims {
            tally.add(victim.record)
            compare.append(.modRevision(victim.key, equals: victim.modRevision))
            ops.append(.delete(victim.key))
        }
        ops.append(.put(PutRequest(key: EtcdBytes(tallyKey), value: EtcdBytes((try? Array(JSONEncoder().encode(tally))) ?? []))))
        _ = try? await gateway.call("/v3/kv/txn", TxnRequest(compare: compare, success: ops, failure: []), as: TxnResponse.self)
    }
}

extension EtcdPool.StoredRecord {
    init?(_ kv: KeyValue) {
        guard let record = try? JSONDecoder().decode(EtcdOperationRecord.self, from: Data(kv.valueBytes)) else { return nil }
        self.init(key: kv.key.bytes, modRevision: kv.modRevision, record: record)
    }
}
