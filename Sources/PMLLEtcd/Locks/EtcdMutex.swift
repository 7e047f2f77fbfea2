import Foundation
import PMLLCore
import PMLLLocks

/// What a waiter key and a held record say about their process.
struct HolderRecord: Codable, Sendable {
    var token: Int64?
    var pid: Int32
    var host: String
    var command: String
    var since: Int64               // ns since 1970
    var inconsistent: Bool?

    /// A held record: its token is in the value, or (written in the same transaction as
    /// the waiter key, on the uncontended path) the record's own mod revision.
    static func decode(_ kv: KeyValue) -> HolderRecord? {
        guard var record = try? JSONDecoder().decode(HolderRecord.self, from: Data(kv.valueBytes)) else { return nil }
        if record.token == nil { record.token = kv.modRevision }
        return record
    }

    var info: HolderInfo {
        HolderInfo(pid: pid, commandName: "\(command) on \(host)", heldSinceNanoseconds: since)
    }
}

extension EtcdPool {
    private func record(token: Int64? = nil, inconsistent: Bool? = nil) -> [UInt8] {
        let record = HolderRecord(token: token, pid: identity.pid, host: identity.host, command: identity.command,
                                  since: Clock.realtimeNanoseconds, inconsistent: inconsistent)
        return (try? Array(JSONEncoder().encode(record))) ?? []
    }

    /// The recipe's steps: enqueue, wait for the predecessor's deletion, claim.
    ///
    /// Shared holds (Docs/Etcd.md "Shared holds"): a reader's key starts with `r`, a writer's
    /// with `w`. A writer waits for every key created before its own; a reader only for the
    /// writers created before it. So readers that arrive with no writer queued share at once,
    /// and a queued writer keeps every later reader out (writers are not starved).
    func acquire(_ id: LockID, shared: Bool = false, timeout: Duration?) async throws(PMLLError) -> EtcdLockGrant {
        if let lost = session.lostReason { throw .lockLost(lock: id.name, token: 0, reason: lost) }
        let start = ContinuousClock.now
        let deadline = timeout.map { start + $0 }
        let prefix = keys.waiters(id.name)
        let blockers = shared ? prefix + Array("w".utf8) : prefix   // the keys this acquisition waits for
        let myKey = nextWaiterKey(id.name, shared: shared)
        let held = keys.held(id.name)

        // 1. Enqueue, and take the lock at once if nothing it waits for is queued: one
        // transaction. Free: put our key and read the held record a dead writer may have left
        // (a reader), or, for a writer, only if there is none, write ours (its mod revision is
        // our key's create revision: the token). Otherwise: put our key, read the two newest
        // keys we wait for (ours is among them for a writer) and the held record. Sent again
        // after a lost answer, it finds our own key and takes the second branch, which keeps
        // the key's create revision. A writer never replaces a dead writer's record here: the
        // claim (3) does, compared on the record it read, so that a claim sent again still
        // knows what it replaced and reports the death.
        let enqueue = PutRequest(key: EtcdBytes(myKey), value: EtcdBytes(record()), lease: EtcdInt(session.leaseID))
        var free: [RequestOp] = [.put(enqueue), .range(RangeRequest(key: EtcdBytes(held))), .range(RangeRequest(key: EtcdBytes(myKey)))]
        var compare: [Compare] = [.noKey(startingWith: blockers)]
        if !shared {
            free.append(.put(PutRequest(key: EtcdBytes(held), value: EtcdBytes(record()))))
            compare.append(.createRevision(held, equals: 0))
        }
        let first: TxnResponse
        do {
            first = try await gateway.call("/v3/kv/txn", TxnRequest(
                compare: compare,
                success: free,
                failure: [.put(enqueue), .range(RangeRequest(key: EtcdBytes(blockers), range_end: EtcdBytes(prefixEnd(blockers)), limit: EtcdInt(2),
                                                              sort_order: "DESCEND", sort_target: "CREATE")),
                          .range(RangeRequest(key: EtcdBytes(myKey))), .range(RangeRequest(key: EtcdBytes(held)))]), as: TxnResponse.self)
        } catch {
            // It may have been applied: our key would then stand in the queue for nobody, and
            // on a free lock a writer's held record would tell the next holder we died.
            session.orphan(myKey, .init(held: shared ? nil : held))
            throw error
        }
        if first.didSucceed {
            // The key's create revision, not this transaction's revision: a reader's request
            // sent again can take this branch twice (its own key is not one it waits for).
            let token = first.range(2)?.all.first?.createRevision ?? 0
            guard token > 0 else { throw .backendUnavailable(address: gateway.address, reason: "etcd gave no revision for the waiter key") }
            return EtcdLockGrant(lock: id, fencingToken: token, previousOwnerDeath: death(in: first.range(1)?.all.first, token: token),
                                 waited: start.duration(to: .now), shared: shared, waiterKey: myKey)
        }
        guard let mine = first.range(2)?.all.first else {
            throw .backendUnavailable(address: gateway.address, reason: "the waiter key was not found after it was put")
        }
        let token = mine.createRevision
        var seenAt = first.header?.rev ?? 0
        var heldSeen = first.range(3)?.all.first
        // The two newest keys we wait for name our predecessor when ours was just created
        // (it is then the newest key). A request sent again after its first answer was lost
        // (a leader killed, a member paused) finds our key from the first delivery, and
        // keys queued since then can be the two newest: the predecessor is then older than
        // both, and only a query bounded by our token finds it. Without that query this
        // acquisition took the lock while its holder still held it.
        let newest = first.range(1)?.all ?? []
        var predecessor = newest.first(where: { $0.key.bytes != myKey && $0.createRevision < token })

        // 2. Wait until no key we wait for was created before ours.
        do throws(PMLLError) {
            if predecessor == nil && newest.count >= 2 {
                let before = try await newestBlocker(blockers, before: token, held: held)
                predecessor = before.blocker
                heldSeen = before.held
                seenAt = before.revision ?? seenAt
            }
            while let waitingFor = predecessor {
                if let lost = session.lostReason { throw .lockLost(lock: id.name, token: token, reason: lost) }
                if Task.isCancelled { throw .cancelled(lock: id.name) }
                if let deadline, ContinuousClock.now >= deadline {
                    throw .timeout(lock: id.name, holder: try? await holder(of: id.name)?.info)
                }
                try await gateway.waitForDeletion(of: waitingFor.key.bytes, after: seenAt, deadline: deadline)
                let before = try await newestBlocker(blockers, before: token, held: held)
                predecessor = before.blocker
                heldSeen = before.held
                seenAt = before.revision ?? seenAt
            }
        } catch {
            await withdraw(myKey, held: nil)
            if case .cancelled = error { throw .cancelled(lock: id.name) }   // the gateway names the watched key
            throw error
        }

        // 3. Claim: only if our key still exists (a lease that expired while we waited
        // deleted it: then we are not the owner, whatever the wait said); a writer writes its
        // held record, only over the one read with the last look (`heldSeen`: a dead writer's,
        // or none). That read is what reports a death, so a claim sent again after a lost
        // answer, which finds our own record there, still reports it.
        let death: OwnerDeath?
        do throws(PMLLError) {
            death = try await claim(id.name, key: myKey, token: token, held: held, seen: heldSeen, shared: shared)
        } catch {
            // Not granted: the key would otherwise keep everyone out until the lease ends,
            // and a claim applied without an answer would leave a record saying we held it.
            await withdraw(myKey, held: shared ? nil : held)
            throw error
        }
        return EtcdLockGrant(lock: id, fencingToken: token, previousOwnerDeath: death, waited: start.duration(to: .now), shared: shared, waiterKey: myKey)
    }

    /// Step 3 of `acquire`: the death to report, once the lock is ours. Tried up to three
    /// times when the held record changed under it.
    private func claim(_ name: String, key myKey: [UInt8], token: Int64, held: [UInt8], seen: KeyValue?, shared: Bool) async throws(PMLLError) -> OwnerDeath? {
        var heldSeen = seen
        for _ in 0..<3 {
            var compare: [Compare] = [.createRevision(myKey, equals: token)]
            var success: [RequestOp] = []
            if !shared {
                compare.append(heldSeen.map { .modRevision(held, equals: $0.modRevision) } ?? .createRevision(held, equals: 0))
                success.append(.put(PutRequest(key: EtcdBytes(held), value: EtcdBytes(record(token: token)))))
            }
            let claim = try await gateway.call("/v3/kv/txn", TxnRequest(
                compare: compare, success: success,
                failure: [.range(RangeRequest(key: EtcdBytes(myKey))), .range(RangeRequest(key: EtcdBytes(held)))]), as: TxnResponse.self)
            if claim.didSucceed { return death(in: heldSeen, token: token) }
            guard claim.range(0)?.all.first?.createRevision == token else {
                throw .lockLost(lock: name, token: token, reason: "the participant's lease expired while it waited (\(session.lostReason ?? "its waiter key is gone"))")
            }
            let now = claim.range(1)?.all.first
            // Our record: this claim was applied before, and its answer lost.
            if let now, HolderRecord.decode(now)?.token == token { return death(in: heldSeen, token: token) }
            heldSeen = now
        }
        throw .backendUnavailable(address: gateway.address, reason: "the held record of lock '\(name)' kept changing under its claim")
    }

    /// The newest key under `blockers` created before `token` (nil: none is left), the held
    /// record as it was then, and the revision both were read at (a watch for the blocker's
    /// deletion starts after it).
    private func newestBlocker(_ blockers: [UInt8], before token: Int64, held: [UInt8]) async throws(PMLLError) -> (blocker: KeyValue?, held: KeyValue?, revision: Int64?) {
        let answer = try await gateway.call("/v3/kv/txn", TxnRequest(compare: [], success: [
            .range(RangeRequest(key: EtcdBytes(blockers), range_end: EtcdBytes(prefixEnd(blockers)), limit: EtcdInt(1),
                                sort_order: "DESCEND", sort_target: "CREATE", max_create_revision: EtcdInt(token - 1))),
            .range(RangeRequest(key: EtcdBytes(held))),
        ], failure: []), as: TxnResponse.self)
        return (answer.range(0)?.all.first, answer.range(1)?.all.first, answer.header?.rev)
    }

    /// The death a held record left by an earlier holder reports (nil: none, or ours).
    private func death(in previous: KeyValue?, token: Int64) -> OwnerDeath? {
        guard let previous, let record = HolderRecord.decode(previous), record.token != token else { return nil }
        return OwnerDeath(cause: record.inconsistent == true ? .releasedInconsistent : .processDied,
                          pid: record.pid, commandName: "\(record.command) on \(record.host)",
                          heldSinceNanoseconds: record.since, detectedAtNanoseconds: Clock.realtimeNanoseconds)
    }

    /// Deletes our waiter key after a timeout or cancellation (and `held`, the lock's held
    /// record, if our claim wrote it), in a task of its own so that the cancellation that got
    /// us here does not cancel the clean-up too. If that fails too, the key is left to the
    /// session, which deletes it once the cluster answers again.
    private func withdraw(_ key: [UInt8], held: [UInt8]?) async {
        let session = self.session, timeout = gateway.requestTimeout
        let done = await Task.detached(executorPreference: EtcdExecutor.shared) {
            (try? await session.retire(key, .init(held: held), timeout: timeout).get()) == true
        }.value
        if !done { session.orphan(key, .init(held: held)) }
    }

    /// Releases an acquisition: deletes its waiter key and its held record (or marks the
    /// record inconsistent), only if the key is still this acquisition's. If it is not, the
    /// lease expired while the lock was held: ``PMLLError/lockLost(lock:token:reason:)``.
    func release(_ grant: EtcdLockGrant) async throws(PMLLError) {
        let held = keys.held(grant.lock.name)
        let key = grant.waiterKey
        let token = grant.fencingToken
        // A reader only withdraws its key: it never wrote the held record (readers do not
        // repair, so a dead writer's record waits for the next writer).
        let last: RequestOp? = grant.shared ? nil : grant.releaseInconsistent
            ? .put(PutRequest(key: EtcdBytes(held), value: EtcdBytes(record(token: token, inconsistent: true))))
            : .delete(held)
        let gateway = self.gateway
        // The release also notes its token in this participant's `released` key: sent again
        // after an attempt whose answer was lost (a leader change), a release that did apply
        // finds its key gone and, there, that it was its own doing.
        let marker = keys.released(session.leaseHex)
        let note = RequestOp.put(PutRequest(key: EtcdBytes(marker), value: EtcdBytes(Array(String(token).utf8)), lease: EtcdInt(session.leaseID)))
        // In a task of its own: a cancelled caller must still release.
        let outcome = await Task.detached(executorPreference: EtcdExecutor.shared) { () async -> Result<TxnResponse, PMLLError> in
            do throws(PMLLError) {
                return .success(try await gateway.call("/v3/kv/txn", TxnRequest(
                    compare: [.createRevision(key, equals: token)], success: [.delete(key), note] + (last.map { [$0] } ?? []),
                    failure: [.range(RangeRequest(key: EtcdBytes(marker)))]), as: TxnResponse.self))
            } catch { return .failure(error) }
        }.value
        guard case .success(let answer) = outcome else {
            // Unknown whether it was applied: if not, the key would hold the lock for nobody
            // while this process renews its lease, and our held record would tell the next
            // holder we died. The session finishes the release once it can.
            session.orphan(key, .init(held: grant.shared ? nil : held,
                                      lastHeld: grant.releaseInconsistent ? record(token: token, inconsistent: true) : nil))
            _ = try outcome.get()
            return
        }
        if !answer.didSucceed, answer.range(0)?.all.first?.valueBytes == Array(String(token).utf8) { return }
        guard answer.didSucceed else {
            throw .lockLost(lock: grant.lock.name, token: token, reason: "the participant's lease expired while the lock was held (\(session.lostReason ?? "its waiter key is gone")); another process may have held it since")
        }
    }

    /// The current holder's waiter record (the lock's oldest key), nil if free.
    func holder(of name: String) async throws(PMLLError) -> HolderRecord? {
        let prefix = keys.waiters(name)
        let first = try await gateway.call("/v3/kv/range", RangeRequest(
            key: EtcdBytes(prefix), range_end: EtcdBytes(prefixEnd(prefix)), limit: EtcdInt(1),
            sort_order: "ASCEND", sort_target: "CREATE"), as: RangeResponse.self)
        guard let kv = first.all.first else { return nil }
        var record = try? JSONDecoder().decode(HolderRecord.self, from: Data(kv.valueBytes))
        record?.token = kv.createRevision
        return record
    }
}
