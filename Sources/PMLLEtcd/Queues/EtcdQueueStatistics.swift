import Foundation
public import PMLLCore
public import PMLLQueues

/// The totals of records that were trimmed (`PREFIX/queuetally/NAME`): with the records
/// still kept, they give statistics over the queue's whole life.
struct EtcdQueueTally: Codable, Sendable {
    var completed: UInt64 = 0
    var failed: UInt64 = 0
    var retried: UInt64 = 0
    var abandoned: UInt64 = 0
    var recovered: UInt64 = 0
    var totalWait: UInt64 = 0
    var totalRun: UInt64 = 0
    var maxWait: UInt64 = 0
    var maxRun: UInt64 = 0
    var waitHistogram = [UInt64](repeating: 0, count: QueueStatistics.bucketCount)
    var runHistogram = [UInt64](repeating: 0, count: QueueStatistics.bucketCount)

    /// Counts `record` as the local queue's counters would have counted it.
    mutating func add(_ record: EtcdOperationRecord) {
        retried += UInt64(max(0, (record.attempts ?? 1) - 1))
        switch record.state {
        case .running: return
        case .abandoned: abandoned += 1; return
        case .recovered, .quarantined: abandoned += 1; recovered += 1; return
        case .completed: completed += 1
        case .failed: failed += 1
        }
        let wait = UInt64(max(0, record.started - (record.submitted ?? record.started)))
        let run = UInt64(max(0, (record.finished ?? record.started) - record.started))
        totalWait += wait
        totalRun += run
        maxWait = max(maxWait, wait)
        maxRun = max(maxRun, run)
        if waitHistogram.count == QueueStatistics.bucketCount {
            waitHistogram[QueueStatistics.bucket(wait)] += 1
            runHistogram[QueueStatistics.bucket(run)] += 1
        }
    }
}

extension EtcdQueue {
    /// The queue's statistics, the local queue's figures over etcd (Docs/Etcd.md "Queues"):
    /// counts and times over the queue's whole life (kept records plus the tally of trimmed
    /// ones), `pending` = operations holding or waiting for the turn, `serving` = the current
    /// turn's ticket (0 if none), `nextTicket` = the cluster's next revision (tickets are
    /// revisions). Read as one snapshot.
    public var stats: QueueStats {
        get async throws(PMLLError) {
            let prefix = pool.keys.queueRecords(name), waiters = pool.keys.waiters(turnID.name)
            let answer = try await pool.gateway.call("/v3/kv/txn", TxnRequest(compare: [], success: [
                .range(RangeRequest(key: EtcdBytes(pool.keys.queueTally(name)))),
                .range(RangeRequest(key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix)))),
                .range(RangeRequest(key: EtcdBytes(waiters), range_end: EtcdBytes(prefixEnd(waiters)), limit: EtcdInt(1),
                                    sort_order: "ASCEND", sort_target: "CREATE")),
            ], failure: []), as: TxnResponse.self)
            var tally = answer.range(0)?.all.first.flatMap { try? JSONDecoder().decode(EtcdQueueTally.self, from: Data($0.valueBytes)) } ?? EtcdQueueTally()
            for kv in answer.range(1)?.all ?? [] {
                if let record = try? JSONDecoder().decode(EtcdOperationRecord.self, from: Data(kv.valueBytes)) { tally.add(record) }
            }
            let turn = answer.range(2)
            let finished = max(1, tally.completed + tally.failed)
            return QueueStats(name: name, persistent: true, completed: tally.completed, failed: tally.failed, retried: tally.retried,
                              abandoned: tally.abandoned, recovered: tally.recovered,
                              pending: UInt64(max(0, turn?.count?.value ?? 0)),
                              nextTicket: UInt64(max(0, (answer.header?.rev ?? 0) + 1)),
                              serving: UInt64(max(0, turn?.all.first?.createRevision ?? 0)),
                              meanWaitNanoseconds: tally.totalWait / finished, maxWaitNanoseconds: tally.maxWait,
                              meanRunNanoseconds: tally.totalRun / finished, maxRunNanoseconds: tally.maxRun,
                              waitHistogram: tally.waitHistogram, runHistogram: tally.runHistogram)
        }
    }
}

extension EtcdPool {
    /// The statistics of every queue that has records, sorted by name (as the local
    /// ``Pool/queues()``).
    public func queues() async throws(PMLLError) -> [QueueStats] {
        let root = keys.queueRoot
        let answer = try await gateway.call("/v3/kv/range", RangeRequest(key: EtcdBytes(root), range_end: EtcdBytes(prefixEnd(root)), keys_only: true),
                                            as: RangeResponse.self)
        var names = Set<String>()
        for kv in answer.all {
            let rest = kv.key.bytes.dropFirst(root.count)
            guard let slash = rest.firstIndex(of: UInt8(ascii: "/")) else { continue }
            names.insert(EtcdKeys.unescape(Substring(decoding: rest[..<slash], as: UTF8.self)))
        }
        var result: [QueueStats] = []
        for name in names.sorted() { result.append(try await queue(named: name).stats) }
        return result
    }
}
