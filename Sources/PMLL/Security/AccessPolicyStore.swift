import CPMLL
import FoundationEssentials
public import PMLLCore
public import PMLLFileBatches
import PMLLStore

/// The access policy's home: one JSON record under the library's key `pmll:policy` in the
/// state store, read by every process through ``AccessGate`` (Docs/Security.md).
extension Pool {
    static let policyKey = "pmll:policy"

    /// Installed by ``Pool/open(path:options:)``: how the gate reads the policy. A point read
    /// of the store (which rolls back a dead committer's transaction it meets first), or,
    /// through a read-only attach, a sequence-lock read; the gate never asks while taking one
    /// of the library's own locks, so this cannot recurse.
    func installPolicyLoader() {
        access.loader.withLock {
            $0 = { pool throws(PMLLError) -> AccessPolicy? in try pool.storedAccessPolicy() }
        }
    }

    func storedAccessPolicy() throws(PMLLError) -> AccessPolicy? {
        guard store.exists else { return nil }
        // A point read: it waits for no commit of another key (commits run in parallel).
        let bytes = try readCommitted(Self.policyKey)
        guard let bytes else { return nil }
        do {
            return try JSONDecoder().decode(AccessPolicy.self, from: Data(bytes))
        } catch {
            throw .corruptRecord(key: Self.policyKey, reason: "not an access policy: \(error)")
        }
    }

    /// The access policy in force (nil: none; everything the file's permissions allow is allowed).
    public func accessPolicy() throws(PMLLError) -> AccessPolicy? {
        try access.policy(self)
    }

    /// Replaces the access policy (nil removes it). Only the pool's owner, or a user a
    /// `policy` rule names, may; the change is audited and every process follows it at its
    /// next check.
    public func setAccessPolicy(_ policy: AccessPolicy?) throws(PMLLError) {
        try access.check(self, .changePolicy)
        if let policy {
            let problems = policy.problems()
            guard problems.isEmpty else {
                throw .invalidConfiguration(file: "access policy", line: nil, key: nil, reason: problems.joined(separator: "; "))
            }
            for rule in policy.signatures {
                for key in rule.keys {
                    do throws(PMLLError) { _ = try MinisignPublicKey(text: key, source: "a key of signature rule '\(rule.name)'") } catch {
                        throw .invalidConfiguration(file: "access policy", line: nil, key: rule.name, reason: "\(error)")
                    }
                }
            }
        }
        let encoded: [UInt8]?
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            encoded = try policy.map { Array(try encoder.encode($0)) }
        } catch {
            throw .invalidConfiguration(file: "access policy", line: nil, key: nil, reason: "cannot encode: \(error)")
        }
        access.policyChanging(self)
        defer { access.policyChanged(self) }
        try internalTransaction { (tx) throws(PMLLError) in
            if let encoded { try tx.setInternal(Self.policyKey, encoded) } else { try tx.deleteInternal(Self.policyKey) }
        }
        CrashPoint.hit("policy.committed")
        audit(.policy, .ok, policy.map { "\($0.rules.count) access rule(s), \($0.signatures.count) signature rule(s)" } ?? "policy removed")
    }

    /// Checks `bytes` (the file the batch was read from) against `signature` by one of
    /// `trusted`, or, when `trusted` is empty, by a key of the policy's signature rule for
    /// `root`; on success `batch` carries its signer, which a policy that requires signed
    /// batches for `root` accepts. Throws ``PMLLError/signatureRejected(subject:reason:)``
    /// (audited) and leaves `batch` unchanged otherwise.
    public func verify(_ batch: inout FileBatch, bytes: [UInt8], signature: MinisignSignature, trusted: [MinisignPublicKey] = [],
                       root: String, subject: String = "file batch") throws(PMLLError) {
        var keys = trusted
        if keys.isEmpty { keys = try policyKeys(for: .batch(root: Pool.absolute(root))) }
        do {
            let signer = try Minisign.verify(bytes, signature: signature, trusted: keys, subject: subject)
            batch.signer = signer.base64
        } catch {
            if case .signatureRejected(_, let reason) = error { audit(.signatureRejected, .denied, "\(subject) for root '\(root)': \(reason)") }
            throw error
        }
    }

    /// The public keys of the policy's signature rule that covers `request` (empty if none).
    package func policyKeys(for request: AccessRequest) throws(PMLLError) -> [MinisignPublicKey] {
        guard let rule = try access.policy(self)?.signatureRule(for: request) else { return [] }
        var keys: [MinisignPublicKey] = []
        for text in rule.keys { keys.append(try MinisignPublicKey(text: text, source: "a key of signature rule '\(rule.name)'")) }
        return keys
    }
}
