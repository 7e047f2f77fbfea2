import FoundationEssentials
import PMLLCore

/// One record of a pool's audit log, as its file holds it.
public struct AuditRecord: Codable, Sendable, Equatable {
    public let seq: UInt64
    /// When it was appended (ns since 1970; for a gap, when it was found).
    public let timeNanoseconds: Int64
    public let pid: Int32
    public let uid: UInt32
    public let command: String
    /// ``AuditEvent``'s name (`queue.submit`, `store.commit`, `gap`, ...).
    public let event: String
    public let object: String
    /// ``AuditOutcome``'s name (`ok`, `failed`, `denied`, `lost`).
    public let outcome: String
    /// The chain hash (hex): BLAKE2b-256 of the previous record's hash and this record's text.
    public let hash: String

    enum CodingKeys: String, CodingKey {
        case seq, pid, uid, command, event, object, outcome, hash
        case timeNanoseconds = "time_ns"
    }
}

/// A signed statement of the chain's size and head (`pmll audit seal`).
public struct AuditCheckpoint: Codable, Sendable, Equatable {
    /// Records covered (the chain's last sequence number).
    public let size: UInt64
    /// The chain hash of record `size` (hex).
    public let head: String
    public let timeNanoseconds: Int64
    public let pool: String
    /// The signing key's ID (hex, first 8 bytes of BLAKE2b-512 of the public key).
    public let key: String
    public let signature: String

    enum CodingKeys: String, CodingKey {
        case size, head, pool, key, signature
        case timeNanoseconds = "time_ns"
    }
}

/// What ``AuditLog/verify(directory:publicKey:)`` found.
/// What ``Pool/pruneAuditLog(keepingFiles:)`` removed.
public struct AuditPruning: Sendable, Equatable, Codable {
    /// The files removed, oldest first (none when no more than the kept number existed).
    public var files: [String]
    /// The records before the oldest file left end here (nil: none were ever pruned).
    public var prunedThrough: UInt64?
}

public struct AuditVerification: Sendable, Equatable {
    public var files = 0
    public var records: UInt64 = 0
    public var gaps = 0
    public var firstSeq: UInt64?
    public var lastSeq: UInt64?
    public var head: String?
    public var checkpoints = 0
    /// Records 1 through this one were pruned (`pmll audit prune`): the oldest file left
    /// continues a signed checkpoint of exactly that size and head, which stands in for them.
    public var prunedThrough: UInt64?
    /// The first problem found; nil when the log verifies.
    public var problem: String?
}
