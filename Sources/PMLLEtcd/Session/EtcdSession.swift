import Foundation
import NIOCore
import NIOPosix
import PMLLCore
import Synchronization

/// A participant's lease: every key this process creates (waiter keys, held records'
/// guards) is bound to it, so that when the process dies — or is paused or cut off past
/// the lease's TTL — etcd deletes them and the next waiter takes over. Kept alive by unary
/// keep-alive calls every TTL/3 (the gateway's streaming keep-alive needs
/// `Expect: 100-continue`; three calls per TTL are cheap at a 2 s minimum TTL), scheduled
/// on a NIO event loop so that they go on whatever the application's tasks are doing.
final class EtcdSession: Sendable {
    let gateway: EtcdGateway
    let leaseID: Int64
    let ttl: Duration
    private struct State {
        var lost: String?
        var lastRenewal: ContinuousClock.Instant
        var keeper: RepeatedTask?
        /// Waiter keys an acquisition may have left behind: its enqueue or its withdrawal
        /// failed with the outcome unknown. Bound to this lease, such a key would keep the
        /// lock from everyone for as long as this process renews it.
        var orphans: [[UInt8]: Orphan] = [:]
    }
    private let state: Mutex<State>

    private init(gateway: EtcdGateway, leaseID: Int64, ttl: Duration) {
        self.gateway = gateway
        self.leaseID = leaseID
        self.ttl = ttl
        state = Mutex(State(lost: nil, lastRenewal: .now, keeper: nil))
    }

    /// Grants the lease and starts keeping it alive. Both happen on a NIO event loop: the
    /// keep-alive is scheduled the moment the grant's answer arrives, however long the
    /// calling task then waits for a cooperative thread to resume on.
    static func start(gateway: EtcdGateway, ttlSeconds: Int64) async throws(PMLLError) -> EtcdSession {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let started = gateway.callOnEventLoop("/v3/lease/grant", LeaseGrantRequest(TTL: EtcdInt(ttlSeconds)), as: LeaseGrantResponse.self, timeout: gateway.requestTimeout)
            .flatMapThrowing { granted -> EtcdSession in
                guard let id = granted.ID?.value, id != 0 else {
                    throw PMLLError.backendUnavailable(address: gateway.address, reason: "etcd granted no lease: \(granted.error ?? "no ID in the answer")")
                }
                let session = EtcdSession(gateway: gateway, leaseID: id, ttl: .seconds(granted.TTL?.value ?? ttlSeconds))
                session.keepAlive(on: loop)
                return session
            }
        do {
            return try await started.get()
        } catch let error as PMLLError {
            throw error
        } catch {
            throw .backendUnavailable(address: gateway.address, reason: "lease grant failed: \(error)")
        }
    }

    private func keepAlive(on loop: any EventLoop) {
        let period = TimeAmount.nanoseconds((ttl / 3).nanosecondsClamped)
        let keeper = loop.scheduleRepeatedAsyncTask(initialDelay: period, delay: period) { [weak self] task in
            guard let self, self.lostReason == nil else {
                task.cancel()
                return loop.makeSucceededVoidFuture()
            }
            return self.renewOnce()
        }
        state.withLock { $0.keeper = keeper }
    }

    /// Why the lease is gone, or nil while it lives (as far as this process knows).
    var lostReason: String? { state.withLock { $0.lost } }

    /// The waiter key's name part: the lease in hex, as etcd's own recipe names it.
    var leaseHex: String { String(UInt64(bitPattern: leaseID), radix: 16) }

    /// One renewal, tried through every member until it succeeds or the lease has had no
    /// renewal for its TTL. Not only for a third of the TTL: during an election a renewal
    /// that gave up then waited another third before the next try, so a few seconds of
    /// election on a loaded machine could use up a 5 s lease whose holder was alive.
    private func renewOnce() -> EventLoopFuture<Void> {
        let sinceRenewal = state.withLock { $0.lastRenewal }.duration(to: .now)
        let timeout = max(ttl / 3, ttl - sinceRenewal)
        return gateway.callOnEventLoop("/v3/lease/keepalive", LeaseIDRequest(ID: EtcdInt(leaseID)), as: LeaseKeepAliveResponse.self, timeout: timeout)
            .flatMap { answer -> EventLoopFuture<Void> in
                if let left = answer.result?.TTL?.value, left > 0 {
                    self.state.withLock { $0.lastRenewal = .now }
                    return self.deleteOrphans(timeout: self.ttl / 3)
                } else {
                    self.state.withLock { $0.lost = "lease \(self.leaseHex) expired (etcd no longer knows it)" }
                    return MultiThreadedEventLoopGroup.singleton.any().makeSucceededVoidFuture()
                }
            }
            .recover { error in
                self.state.withLock {
                    if $0.lastRenewal.duration(to: .now) >= self.ttl { $0.lost = "lease \(self.leaseHex) could not be renewed for its TTL: \(error)" }
                }
            }
    }

    /// What an acquisition whose last call went unanswered may have left besides its waiter
    /// key: a writer's held record naming it (a free lock's enqueue, a claim, a release that
    /// was not applied), which the next holder would otherwise read as a holder's death.
    struct Orphan: Sendable {
        /// The lock's held record, for a writer; nil for a reader (it never writes one).
        var held: [UInt8]?
        /// The held record's last value if it is still ours (a release marking the lock
        /// inconsistent); nil deletes it, as a clean release does.
        var lastHeld: [UInt8]?
    }

    /// Notes a waiter key that may exist with no acquisition behind it; the next renewal
    /// that reaches the cluster deletes it, with the held record if that is its.
    func orphan(_ key: [UInt8], _ orphan: Orphan = Orphan()) {
        state.withLock { $0.orphans[key] = orphan }
    }

    private func deleteOrphans(timeout: Duration) -> EventLoopFuture<Void> {
        let loop = MultiThreadedEventLoopGroup.singleton.any()
        let orphans = state.withLock { $0.orphans }
        guard !orphans.isEmpty else { return loop.makeSucceededVoidFuture() }
        let deletions = orphans.map { key, orphan in
            retire(key, orphan, timeout: timeout)
                .map { done in if done { self.state.withLock { _ = $0.orphans.removeValue(forKey: key) } } }
                .recover { _ in }   // kept for the next renewal
        }
        return EventLoopFuture.andAllComplete(deletions, on: loop)
    }

    /// Deletes a waiter key whose acquisition has ended, by name: its name (lease, sequence
    /// number) belongs to that acquisition only, so no other acquisition's key can bear it
    /// (the deletion by name that etcd issue 22082 warns of needs a name used twice). A
    /// writer's held record goes in the same transaction if its token is the key's create
    /// revision, compared on the record's mod revision, so a record another holder wrote
    /// meanwhile is left alone. True once nothing of the acquisition is left.
    func retire(_ key: [UInt8], _ orphan: Orphan, timeout: Duration) -> EventLoopFuture<Bool> {
        guard let held = orphan.held else {
            return gateway.callOnEventLoop("/v3/kv/deleterange", DeleteRangeRequest(key: EtcdBytes(key)), as: RangeResponse.self, timeout: timeout)
                .map { _ in true }
        }
        let gateway = self.gateway
        let look = TxnRequest(compare: [], success: [.range(RangeRequest(key: EtcdBytes(key))), .range(RangeRequest(key: EtcdBytes(held)))], failure: [])
        return gateway.callOnEventLoop("/v3/kv/txn", look, as: TxnResponse.self, timeout: timeout)
            .flatMap { seen -> EventLoopFuture<Bool> in
                // Without the key (never put, or already deleted with its record) nothing is left.
                guard let mine = seen.range(0)?.all.first else { return MultiThreadedEventLoopGroup.singleton.any().makeSucceededFuture(true) }
                var compare: [Compare] = [.createRevision(key, equals: mine.createRevision)]
                var success: [RequestOp] = [.delete(key)]
                if let record = seen.range(1)?.all.first, HolderRecord.decode(record)?.token == mine.createRevision {
                    compare.append(.modRevision(held, equals: record.modRevision))
                    success.append(orphan.lastHeld.map { .put(PutRequest(key: EtcdBytes(held), value: EtcdBytes($0))) } ?? .delete(held))
                }
                // A failed compare means something changed between the two calls: looked at again next time.
                return gateway.callOnEventLoop("/v3/kv/txn", TxnRequest(compare: compare, success: success, failure: []), as: TxnResponse.self, timeout: timeout)
                    .map { $0.didSucceed }
            }
    }

    /// Stops renewing and revokes the lease: etcd deletes every key bound to it at once
    /// (waiters behind this process's keys move on without waiting for the TTL).
    func close() async {
        let keeper = state.withLock { $0.keeper }
        keeper?.cancel()
        _ = try? await gateway.call("/v3/lease/revoke", LeaseIDRequest(ID: EtcdInt(leaseID)), as: RangeResponse.self, timeout: .seconds(2))
    }

    /// Stops renewing without revoking, as a process that hangs would (tests, `pmll-etcd`'s
    /// pause simulation is SIGSTOP; this is for the library's own tests of expiry).
    func abandon() {
        state.withLock { $0.keeper?.cancel() }
    }
}

/// Who this process is, as other participants see it in holder records and status.
struct ParticipantIdentity: Codable, Sendable {
    var pid: Int32
    var host: String
    var command: String

    static let current: ParticipantIdentity = {
        var name = [UInt8](repeating: 0, count: 256)
        _ = name.withUnsafeMutableBufferPointer { gethostname(UnsafeMutableRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self), 255) }
        return ParticipantIdentity(pid: ProcessIdentity.pid, host: String(decoding: name.prefix(while: { $0 != 0 }), as: UTF8.self),
                                   command: ProcessIdentity.commandName())
    }()

    static func isCurrent(pid: Int32, host: String) -> Bool { pid == current.pid && host == current.host }
}
