import Foundation
import PMLLCore
@testable import PMLLEtcd
import PMLLStressSupport
import Testing

/// The lock recipe's first step sent again after its answer was lost (a leader killed or a
/// member paused between applying it and answering). Reproduced without a fault: the
/// waiter key of the first delivery is put beforehand, the way etcd applied it.
@Suite("etcd backend: an enqueue sent again")
struct EtcdResentEnqueueTests {
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
}
