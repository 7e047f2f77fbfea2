import Foundation
import PMLLCore
@testable import PMLLEtcd
import PMLLLocks
import PMLLQueues
import PMLLStressSupport
import Testing

/// Requests whose answer was lost (a leader killed or a member paused between applying a
/// request and answering) or never came: the lock recipe's steps, queues and recovery must
/// give the same outcome when sent again, and leave no key behind.
@Suite("etcd backend: requests sent again after a lost answer")
struct EtcdLostAnswerTests {
    /// A participant whose every call gets its answer only when sent again.
    static func lossyPool(_ address: String) async throws -> EtcdPool {
        let pool = try await EtcdPool.open(url: address)
        pool.gateway.losesFirstAnswers.store(true, ordering: .relaxed)
        return pool
    }

    /// A participant that dies while its operation of `kind` runs on `queue`: its lease is
    /// no longer renewed, and the operation never ends (cancel the task to let it go).
    static func dyingOperation(_ address: String, queue: String, kind: String) async throws -> Task<Void, any Error> {
        let dying = try await EtcdPool.open(url: address)
        return Task.detached(executorPreference: EtcdExecutor.shared) {
            try await dying.queue(named: queue).execute(kind: kind) { _ in
                dying.stopRenewingLease()
                try await Task.sleep(for: .seconds(3600))
            }
        }
    }

    /// Reproduced without a fault: the waiter key of the first delivery is put beforehand,
    /// the way etcd applied it, and two waiters queue behind it before it is sent again.
    @Test("an enqueue applied once, then sent again after newer waiters queued, still waits for the holder")
    func resentEnqueueWaitsForTheHolder() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let address = cluster.address("resent")
            let holder = try await EtcdPool.open(url: address)
            let late = try await EtcdPool.open(url: address)
            let others = [try await EtcdPool.open(url: address), try await EtcdPool.open(url: address)]
            let id = LockID(name: "L", level: .package)
            let held = try await holder.acquire(id, timeout: nil)

            // `late`'s first delivery: its key, bound to its lease, after the holder's.
            let prefix = late.keys.waiters("L")
            let firstDelivery = prefix + Array("w\(late.session.leaseHex)-1".utf8)
            let put = try await late.gateway.call("/v3/kv/txn", TxnRequest(compare: [], success: [
                .put(PutRequest(key: EtcdBytes(firstDelivery), value: EtcdBytes(Array("{}".utf8)), lease: EtcdInt(late.session.leaseID))),
            ], failure: []), as: TxnResponse.self)
            #expect(put.didSucceed)
            // Two waiters queue after it: they are now the two newest keys.
            let waiters = others.map { pool in
                Task.detached(executorPreference: EtcdExecutor.shared) { () async throws -> Int64 in
                    let grant = try await pool.acquire(id, timeout: .seconds(60))
                    try await pool.release(grant)
                    return grant.fencingToken
                }
            }
            func queued() async throws -> Int {
                let answer = try await late.gateway.call("/v3/kv/range", RangeRequest(
                    key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix)), keys_only: true), as: RangeResponse.self)
                return answer.all.count
            }
            try await waitUntil { try await queued() == 4 }

            // The same request again: it must wait behind the holder, whose key is older
            // than the two newest, and give up at its deadline, withdrawing its key.
            await #expect(throws: PMLLError.self) {
                let grant = try await late.acquire(id, timeout: .seconds(1))
                Issue.record("granted token \(grant.fencingToken) while token \(held.fencingToken) holds the lock")
                try await late.release(grant)
            }
            #expect(try await queued() == 3, "the acquisition sent again used the first delivery's key and withdrew it")

            try await holder.release(held)
            for waiter in waiters { #expect(try await waiter.value > held.fencingToken) }
            for pool in [holder, late] + others { await pool.close() }
        }
    }

    @Test("every first answer lost: the lock stays exclusive, a death is still reported to the next holder, clean releases are not reported lost")
    func everyFirstAnswerLost() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let address = cluster.address("lossy", ttl: 2)
            let id = LockID(name: "L", level: .package)
            let lossy = try await Self.lossyPool(address)

            // Free lock, clean releases: each enqueue, claim and release is applied, its
            // answer lost, and sent again.
            let other = try await EtcdPool.open(url: address)
            var last: Int64 = 0
            for _ in 0..<3 {
                let grant = try await lossy.acquire(id, timeout: .seconds(10))
                #expect(grant.fencingToken > last)
                #expect(grant.previousOwnerDeath == nil, "a clean release reported as a death")
                last = grant.fencingToken
                await #expect(throws: PMLLError.self, "another participant got the lock while it was held") {
                    let intruder = try await other.acquire(id, timeout: .milliseconds(300))
                    try await other.release(intruder)
                }
                try await lossy.release(grant)
            }
            await other.close()

            // A holder dies (its lease is no longer renewed) while the lossy participant waits:
            // its claim, answered only when sent again, still reports the death.
            let dying = try await EtcdPool.open(url: address)
            let dead = try await dying.acquire(id, timeout: nil)
            dying.stopRenewingLease()
            let next = try await lossy.acquire(id, timeout: .seconds(30))
            #expect(next.fencingToken > dead.fencingToken)
            #expect(next.previousOwnerDeath?.cause == .processDied, "the death behind a claim sent again: \(String(describing: next.previousOwnerDeath))")
            try await lossy.release(next)

            // A holder dies and its key is gone before anyone asks: the next acquisition finds
            // no key queued (the free path) and must still report the death.
            let dying2 = try await EtcdPool.open(url: address)
            let dead2 = try await dying2.acquire(id, timeout: nil)
            dying2.stopRenewingLease()
            try await waitUntil { try await lossy.lockStatus().first { $0.name == "L" }?.holder == nil }
            let after = try await lossy.acquire(id, timeout: .seconds(10))
            #expect(after.fencingToken > dead2.fencingToken)
            #expect(after.previousOwnerDeath?.cause == .processDied, "the death behind a free lock: \(String(describing: after.previousOwnerDeath))")
            try await lossy.release(after)

            // Reported once: the holder after a clean release is told of nothing.
            let clean = try await lossy.acquire(id, timeout: .seconds(10))
            #expect(clean.previousOwnerDeath == nil)
            try await lossy.release(clean)
            await lossy.close()
        }
    }

    @Test("every first answer lost: queue operations still run one at a time in ticket order, retries and batches are recorded once, a dead participant's operation is marked abandoned")
    func queuesWithEveryFirstAnswerLost() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let address = cluster.address("lossyq")
            var pools: [EtcdPool] = []
            for _ in 0..<3 { pools.append(try await Self.lossyPool(address)) }
            try await CoordinationPoolTests.exerciseQueues(pools)

            // A participant dies while its operation runs (its lease is no longer renewed): the
            // next operation's turn is claimed through a lost answer, and must still learn of
            // the death and mark the dead one's record abandoned.
            let stuck = try await Self.dyingOperation(cluster.address("lossyq", ttl: 2), queue: "jobs2", kind: "stuck")
            defer { stuck.cancel() }
            let queue = try pools[0].queue(named: "jobs2")
            try await waitUntil { try await queue.records().first?.state == .running }
            #expect(try await queue.execute(kind: "next", timeout: .seconds(60)) { _ in 7 } == 7)
            let states = try await queue.records().map(\.state)
            #expect(states == [.abandoned, .completed], "the dead participant's operation is marked abandoned: \(states)")
            for pool in pools { await pool.close() }
        }
    }

    @Test("every first answer lost: recovery with a retry policy runs a dead participant's operation again, once")
    func recoveryWithEveryFirstAnswerLost() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let address = cluster.address("lossyr", ttl: 2)
            let stuck = try await Self.dyingOperation(address, queue: "jobs", kind: "install")
            defer { stuck.cancel() }
            let lossy = try await Self.lossyPool(address)
            var policies = RecoveryPolicies()
            policies.byKind["install"] = .retry
            // Once the dead participant's lease is gone, a dry run plans the retry.
            try await waitUntil { try await !lossy.recover(handlers: [:], policies: policies, dryRun: true).items.isEmpty }
            let ran = TicketLog()
            let handler: EtcdRecoveryHandler = { record in ran.append(UInt64(record.ticket)) }
            // A mark whose answer was lost leaves the record for the next recovery: at most
            // two runs, then nothing is left.
            for _ in 0..<2 where ran.values.isEmpty {
                _ = try await lossy.recover(handlers: ["install": handler], policies: policies)
            }
            #expect(ran.values.count == 1, "the operation was run again \(ran.values.count) time(s)")
            #expect(try await lossy.recover(handlers: ["install": handler], policies: policies).items.isEmpty)
            #expect(ran.values.count == 1)
            await lossy.close()
        }
    }

    @Test("an enqueue applied but never answered, a release never delivered (until their deadline): the key is deleted once the cluster answers, and does not keep the lock from others")
    func anUnansweredEnqueueLeavesNoKeyBehind() async throws {
        try await onEtcdThread {
            let cluster = try EtcdCluster()
            defer { cluster.stop() }
            let address = cluster.address("orphan", ttl: 2)
            let stranded = try await EtcdPool.open(url: address, requestTimeout: .seconds(1))
            let other = try await EtcdPool.open(url: address)
            let id = LockID(name: "L", level: .package)
            stranded.gateway.losesEveryAnswer.store(true, ordering: .relaxed)
            await #expect(throws: PMLLError.self) { _ = try await stranded.acquire(id, timeout: .seconds(5)) }
            stranded.gateway.losesEveryAnswer.store(false, ordering: .relaxed)
            // Its key was put (the answers were lost, not the requests) and its lease is still
            // renewed: left there, the key would keep the lock from everyone while `stranded` lives.
            let grant = try await other.acquire(id, timeout: .seconds(10))
            // Nobody died: `stranded` never got the lock it may have been given.
            #expect(grant.previousOwnerDeath == nil, "a death reported for an acquisition whose answer was lost")
            try await other.release(grant)

            // A release that never reaches the cluster: its outcome is unknown to the process,
            // and the key stays until the session deletes it.
            let held = try await stranded.acquire(id, timeout: .seconds(10))
            stranded.gateway.dropsEveryRequest.store(true, ordering: .relaxed)
            await #expect(throws: PMLLError.self) { try await stranded.release(held) }
            stranded.gateway.dropsEveryRequest.store(false, ordering: .relaxed)
            let next = try await other.acquire(id, timeout: .seconds(10))
            #expect(next.previousOwnerDeath == nil, "a death reported for a holder that released")
            try await other.release(next)
            await stranded.close()
            await other.close()
        }
    }
}
