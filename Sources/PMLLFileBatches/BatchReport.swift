public import PMLLCore
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What applying a batch did.
public struct BatchReport: Sendable, Codable, Equatable {
    public let backend: IOBackendKind
    /// How the batch created files on the root's filesystem (Docs/FileBatches.md).
    public let creation: FileCreation
    public let atomic: Bool
    /// One result per entry (non-atomic mode reports each; atomic mode fails whole, so all
    /// are `.applied` when it returns).
    public let results: [BatchEntryResult]
    public let nanoseconds: Int64
    /// Where an atomic batch spent its time (zero for best effort), for benchmarks and logs.
    public var phases = BatchPhases()
}

/// Nanoseconds per phase of an atomic batch (Docs/FileBatches.md, "Atomic protocol").
public struct BatchPhases: Sendable, Codable, Equatable {
    /// Writing the journal (one store transaction).
    public var journal: Int64 = 0
    /// Directories; new files written, linked, backed up, renamed into place where no earlier
    /// step touches their path, and fsynced one by one (small batches).
    public var stage: Int64 = 0
    /// The other steps in order, then the directory fsyncs or the syncfs, and requested fsyncs.
    public var apply: Int64 = 0
    /// The commit transaction.
    public var commit: Int64 = 0
    /// Removing the backups (their directories fsynced) and the journal.
    public var cleanUp: Int64 = 0
}

/// What happened to one entry of a batch.
public enum BatchEntryResult: Sendable, Equatable, Codable, CustomStringConvertible {
    case applied
    case failed(BatchEntryError)

    public var isApplied: Bool { self == .applied }
    public var description: String {
        switch self {
        case .applied: "ok"
        case .failed(let error): error.description
        }
    }

    // JSON as before the enum: "ok", or the error's one-line message.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        self = text == "ok" ? .applied : .failed(BatchEntryError(message: text))
    }
}

/// Why one entry of a best-effort batch was not applied.
public struct BatchEntryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The typed error (nil only for a result read back from JSON, which keeps the message).
    public let error: PMLLError?
    private let message: String

    public init(_ error: PMLLError) {
        self.error = error
        self.message = error.description
    }

    init(message: String) {
        self.error = nil
        self.message = message
    }

    public var description: String { message }
}

/// An atomic batch whose rollback (or clean-up after its commit) could not be completed: its
/// journal is kept, and every recovery tries again until it succeeds. Until then `pmll
/// recover` exits 65 and `pmll check` lists it.
public struct BatchAttention: Sendable, Equatable, Codable, CustomStringConvertible {
    public let id: String
    public let root: String
    public let reason: String
    public var description: String { "file batch \(id) on '\(root)' needs attention: \(reason)" }
}

/// What a recovery of file batches did.
public struct FileBatchRecovery: Sendable, Equatable, Codable {
    /// Batches rolled back (or cleaned up after their commit), journals removed.
    public var handled = 0
    /// Batches that could not be (journal kept).
    public var needsAttention: [BatchAttention] = []
    public init() {}
}

/// A change that undo or clean-up could not make.
package struct RollbackFailure: Sendable, Equatable, CustomStringConvertible {
    /// The batch entry (-1: the batch as a whole).
    package let step: Int
    package let path: String
    package let call: String
    package let errno: Int32

    package var description: String {
        "\(step >= 0 ? "entry \(step) " : "")\(call) '\(path)': \(Errno(rawValue: errno).description) (errno \(errno))"
    }
}

extension RollbackFailure {
    /// Opening the directory of a step's path failed with `error`. Nil when nothing of the
    /// step can be left there: the directory is gone (removed with what the batch put in it)
    /// or the path does not lead to a directory below the root (so the batch created nothing
    /// under it).
    package init?(opening error: PMLLError, step: Int, path: String) {
        switch error {
        case .batchFailed(_, _, let e) where e == .noSuchFileOrDirectory: return nil
        case .invalidBatch: return nil
        case .batchFailed(_, _, let e): self.init(step: step, path: path, call: "open directory", errno: e.rawValue)
        default: self.init(step: step, path: path, call: "open directory", errno: EIO)
        }
    }
}
