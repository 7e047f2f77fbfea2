import Foundation
public import PMLLCore
import PMLLLocks
import Synchronization

/// A pool whose locks, state and queues live in an etcd cluster (etcd ≥ 3.5), for
/// processes on several machines. Same names and guarantees as the local ``Pool`` where
/// they carry over (Docs/Etcd.md): FIFO locks with deadlines and cancellation, the next
/// holder told of its predecessor's death, the hierarchy, transactions that commit
/// atomically or not at all; plus a fencing token per acquisition, because a lease is only
/// a promise in time.
///
/// Every operation is a network round trip, so the API is `async` only. One participant
/// lease per open pool: its TTL is how long a dead, paused or cut-off process keeps its
/// locks.
public final class EtcdPool: Sendable {
    public let etcdAddress: EtcdAddress
    var addressDescription: String { etcdAddress.description }
    let gateway: EtcdGateway
    let session: EtcdSession
    let keys: EtcdKeys
    let identity: ParticipantIdentity
    private let levels = Mutex<[String: LockLevel]>([:])
    private let sequence = Atomic<UInt64>(0)

    private init(address: EtcdAddress, gateway: EtcdGateway, session: EtcdSession) {
        etcdAddress = address
        self.gateway = gateway
        self.session = session
        keys = EtcdKeys(root: address.prefix)
        identity = .current
    }

    /// Opens the pool at `url` (`etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?ttl=SECONDS]`):
    /// grants this participant's lease. Throws ``PMLLError/invalidPoolPath(path:reason:)``
    /// for a bad address and ``PMLLError/backendUnavailable(address:reason:)`` when no
    /// member answers.
    ///
    /// `requestTimeout` bounds each call, retries through other members included (an
    /// election after a leader's loss takes one to a few seconds).
    public static func open(url: String, requestTimeout: Duration = .seconds(10)) async throws(PMLLError) -> EtcdPool {
        let address = try EtcdAddress(parsing: url)
        let gateway = try EtcdGateway(address: address.description, endpoints: address.endpoints, requestTimeout: requestTimeout, tls: address.tls)
        let session = try await EtcdSession.start(gateway: gateway, ttlSeconds: address.ttlSeconds)
        return EtcdPool(address: address, gateway: gateway, session: session)
    }

    /// Revokes the lease: every lock this participant still holds or waits for is freed at
    /// once. (Connections belong to the process's one HTTP client and are reused.)
    public func close() async {
        await session.close()
    }

    /// Stops keeping the lease alive without revoking it, as a process that hangs would:
    /// its locks are freed when the TTL runs out. For tests of expiry and fencing.
    public func stopRenewingLease() { session.abandon() }

    /// The lease's id (hex), as waiter keys and `pmll status` show it.
    public var participantLease: String { session.leaseHex }

    /// The lock `name` at `level`; its level is recorded in etcd on first use, and a later
    /// use at another level is ``PMLLError/levelMismatch(name:existing:requested:)``.
    public func lock(named name: String, level: LockLevel) async throws(PMLLError) -> EtcdLock {
        try LockTable.validate(name: name)
        if let known = levels.withLock({ $0[name] }) {
            guard known == level else { throw .levelMismatch(name: name, existing: known, requested: level) }
            return EtcdLock(pool: self, id: LockID(name: name, level: level))
        }
        let key = keys.level(name)
        let answer = try await gateway.call("/v3/kv/txn", TxnRequest(
            compare: [.createRevision(key, equals: 0)],
            success: [.put(PutRequest(key: EtcdBytes(key), value: EtcdBytes(String(level.rawValue))))],
            failure: [.range(RangeRequest(key: EtcdBytes(key)))]), as: TxnResponse.self)
        var existing = level
        if !answer.didSucceed, let stored = answer.range(0)?.all.first,
           let raw = UInt32(String(decoding: stored.valueBytes, as: UTF8.self)),
           let recorded = LockLevel(rawValue: raw) {
            existing = recorded
        }
        levels.withLock { $0[name] = existing }
        guard existing == level else { throw .levelMismatch(name: name, existing: existing, requested: level) }
        return EtcdLock(pool: self, id: LockID(name: name, level: level))
    }

    /// A new waiter key: `w` (exclusive) or `r` (shared), the lease in hex, a sequence number.
    func nextWaiterKey(_ name: String, shared: Bool) -> [UInt8] {
        let n = sequence.add(1, ordering: .relaxed).newValue
        return keys.waiters(name) + Array("\(shared ? "r" : "w")\(session.leaseHex)-\(n)".utf8)
    }
}
