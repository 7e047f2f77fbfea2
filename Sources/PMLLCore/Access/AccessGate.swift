public import CPMLL
public import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where every layer asks "may this process do this?" before touching anything: the pool's
/// access policy and read-only attach, in one place (Docs/Security.md).
///
/// The policy lives in the state store (a layer above); the facade installs a ``loader``
/// that reads it. Each process keeps the policy it last read with the header's policy epoch
/// at that moment; a change of policy moves the epoch, so every process re-reads it at its
/// next check. The lock path must stay at a few nanoseconds, so its check is one comparison
/// of two words (``Pool/checkLockAccess(_:shared:)``); everything else takes the slow path.
@usableFromInline
package final class AccessGate: Sendable {
    /// Per lock-table entry: `epoch << 1 | 1` once the entry was allowed at that epoch.
    private let lockDecisions = Mutex<UnsafeMutablePointer<UInt64>?>(nil)
    private let compiled = Mutex<(epoch: UInt32, policy: AccessPolicy?)?>(nil)
    package let loader = Mutex<(@Sendable (Pool) throws(PMLLError) -> AccessPolicy?)?>(nil)
    package let readOnly: Bool
    private let lockCapacity: Int
    private let identity = Mutex<AccessIdentity?>(nil)

    static let notLoaded: UInt64 = 1 << 1
    static let lockRules: UInt64 = 1 << 0
    static let readOnlyFlag: UInt64 = 1 << 2

    /// The first value of ``Pool/accessState``: nothing read yet.
    package static func initialState(readOnly: Bool) -> UInt64 { notLoaded | (readOnly ? readOnlyFlag : 0) }

    package init(readOnly: Bool, lockCapacity: Int) {
        self.readOnly = readOnly
        self.lockCapacity = lockCapacity
    }

    deinit {
        lockDecisions.withLock { if let table = $0 { free(table) } }
    }

    package var caller: AccessIdentity {
        identity.withLock { known in
            if let known { return known }
            let current = AccessIdentity.current()
            known = current
            return current
        }
    }

    /// The policy in force now (nil: none), read again if its epoch moved. An odd epoch means
    /// a change is under way (or its writer died between commit and publication): then the
    /// policy is read on every check and kept by nobody, so no process can keep a stale one.
    package func policy(_ pool: Pool) throws(PMLLError) -> AccessPolicy? {
        let epoch = pmll_load32(pmll_header_policy_epoch(pool.memory.header))
        let stable = epoch & 1 == 0
        if stable, let known = compiled.withLock({ $0 }), known.epoch == epoch { return known.policy }
        let loaded = try loader.withLock { $0 }?(pool)
        guard stable else { return loaded }
        compiled.withLock { $0 = (epoch, loaded) }
        let flags = (loaded?.hasLockRules == true ? Self.lockRules : 0) | (readOnly ? Self.readOnlyFlag : 0)
        pool.accessState.store(UInt64(epoch) << 8 | flags, ordering: .releasing)
        return loaded
    }

    /// Throws unless the caller may make `request`: ``PMLLError/readOnlyPool(path:operation:)``
    /// on a read-only attach, ``PMLLError/accessDenied(operation:rule:)`` (audited) when the
    /// policy says no.
    package func check(_ pool: Pool, _ request: AccessRequest) throws(PMLLError) {
        if readOnly { throw .readOnlyPool(path: pool.path, operation: request.description) }
        if case .changePolicy = request {
            // The owner always may (even when the stored policy is damaged: that is how it is
            // repaired); others only if a policy rule names them.
            if caller.uid == pool.ownerUID { return }
            let policy = try policy(pool)
            let named = policy?.rules.contains { $0.action == .policy && $0.admits(caller) } ?? false
            if !named { throw denied(pool, request, rule: "owner-only") }
            return
        }
        guard let policy = try policy(pool) else { return }
        if let rule = policy.denyingRule(request, caller: caller) { throw denied(pool, request, rule: rule.name) }
    }

    /// Throws ``PMLLError/signatureRejected(subject:reason:)`` (audited) when a signature rule
    /// covers `request` and `signer` (the public key that verified the content, as the base64
    /// line of its `.pub` file) is not one of its keys.
    package func requireSignature(_ pool: Pool, _ request: AccessRequest, signer: String?, subject: String) throws(PMLLError) {
        guard let rule = try policy(pool)?.signatureRule(for: request) else { return }
        if let signer, rule.keys.contains(signer) { return }
        let reason = signer == nil
            ? "the policy (rule '\(rule.name)') requires a minisign signature by one of its keys"
            : "signed by a key that the policy's rule '\(rule.name)' does not list"
        pool.audit(.signatureRejected, .denied, "\(subject): \(reason)")
        throw .signatureRejected(subject: subject, reason: reason)
    }

    /// Around a change of the stored policy: the epoch is made odd before the commit and moved
    /// to the next even value after it, so every process (this one included) reads the policy
    /// again, and while it is odd nobody keeps what it read.
    package func policyChanging(_ pool: Pool) {
        _ = pmll_or32(pmll_header_policy_epoch(pool.memory.header), 1)
    }

    package func policyChanged(_ pool: Pool) {
        _ = pmll_add32(pmll_header_policy_epoch(pool.memory.header), 1)
    }

    private func denied(_ pool: Pool, _ request: AccessRequest, rule: String) -> PMLLError {
        pool.audit(.accessDenied, .denied, "\(request.description): rule '\(rule)' (uid \(caller.uid))")
        return .accessDenied(operation: "uid \(caller.uid) may not \(request.description)", rule: rule)
    }

    /// The slow half of ``Pool/checkLockAccess(_:shared:)``.
    @usableFromInline @inline(never)
    package func checkLock(_ pool: Pool, _ index: LockIndex, shared: Bool) throws(PMLLError) {
        let entry = pool.memory.lock(index)
        if readOnly {
            let level = LockLevel(rawValue: entry.pointee.level) ?? .network
            let name = String(fixedCString: entry.pointee.name)
            throw .readOnlyPool(path: pool.path, operation: AccessRequest.lock(name: name, level: level, shared: shared).description)
        }
        // The library's own locks (store, queues, batches) are governed by the rules of what
        // they protect. The policy is not read for them: reading it takes the store lock. So a
        // process that takes only those (a queue worker) always comes here, and this must
        // stay a few loads.
        if pmll_lock_is_internal(entry) != 0 { return }
        let level = LockLevel(rawValue: entry.pointee.level) ?? .network
        guard let policy = try policy(pool), policy.hasLockRules else { return }
        let name = String(fixedCString: entry.pointee.name)
        // A decision depends on the entry and the epoch only, unless a rule names a mode:
        // then each acquisition is decided afresh.
        let epoch = UInt64(pmll_load32(pmll_header_policy_epoch(pool.memory.header)))
        let modeSensitive = policy.rules.contains { $0.action == .lock && $0.mode != nil }
        let decisions = lockDecisions.withLock { table -> UnsafeMutablePointer<UInt64> in
            if let table { return table }
            // Room for every entry the table may grow to; calloc leaves the pages untouched
            // (and unbacked) until an entry is decided.
            let made = calloc(max(lockCapacity, Int(PMLL_LOCK_ENTRIES_MAX)), MemoryLayout<UInt64>.size)!.assumingMemoryBound(to: UInt64.self)
            table = made
            return made
        }
        let cell = decisions + Int(index.rawValue)
        let cacheable = !modeSensitive && epoch & 1 == 0
        if cacheable && pmll_load64_acquire(cell) == epoch << 1 | 1 { return }
        try check(pool, .lock(name: name, level: level, shared: shared))
        if cacheable { pmll_store64_release(cell, epoch << 1 | 1) }
    }
}

extension Pool {
    /// Before a lock word is touched: the read-only and policy checks, free (one comparison)
    /// when the pool has no lock rules.
    @inlinable @inline(__always)
    package func checkLockAccess(_ index: LockIndex, shared: Bool) throws(PMLLError) {
        if _fastPath(lockAccessIsOpen) { return }
        try access.checkLock(self, index, shared: shared)
    }

    /// True when every lock may be taken without looking at rules (writable, no lock rules).
    @inlinable @inline(__always)
    package var lockAccessIsOpen: Bool {
        accessState.load(ordering: .relaxed) == UInt64(pmll_load32(pmll_header_policy_epoch(memory.header))) << 8
    }
}
