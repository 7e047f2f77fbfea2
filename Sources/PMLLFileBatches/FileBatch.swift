package import PMLLCore
import PMLLLocks
import PMLLStore

/// File operations applied as one batch, relative to a root directory (Docs/FileBatches.md).
public struct FileBatch: Sendable, Equatable {
    public enum Operation: Sendable, Equatable {
        /// Create or overwrite `path` with `data` and `mode`.
        case write(path: String, data: [UInt8], mode: UInt32)
        /// Atomically replace an existing `path`.
        case replace(path: String, data: [UInt8], mode: UInt32)
        case delete(path: String)
        /// Create `path` and any missing parents.
        case mkdir(path: String, mode: UInt32)
        case rename(from: String, to: String)
        /// fsync a file or directory.
        case fsync(path: String)

        var paths: [String] {
            switch self {
            case .write(let p, _, _), .replace(let p, _, _), .delete(let p), .mkdir(let p, _), .fsync(let p): [p]
            case .rename(let a, let b): [a, b]
            }
        }

        /// A write or a replace: the entry brings new content.
        var writesContent: Bool {
            switch self {
            case .write, .replace: true
            case .delete, .mkdir, .rename, .fsync: false
            }
        }
    }

    public var operations: [Operation]
    /// The minisign public key (base64 line of its `.pub` file) whose signature over the
    /// batch's bytes was verified (`Pool.verify(_:bytes:signature:trusted:root:)`); what a
    /// policy that requires signed batches checks.
    public package(set) var signer: String?
    public init(_ operations: [Operation]) { self.operations = operations }

    /// Checks every entry before anything is touched: paths relative, confined (no "..", no
    /// empty or "." components, no NUL, components ≤ 255 bytes), modes ≤ 07777.
    func validate() throws(PMLLError) {
        guard !operations.isEmpty else { throw .invalidBatch(index: nil, reason: "empty") }
        for (index, op) in operations.enumerated() {
            for path in op.paths { try PathGuard.check(path, index: index) }
            switch op {
            case .write(_, _, let mode), .replace(_, _, let mode), .mkdir(_, let mode):
                guard mode <= 0o7777 else { throw .invalidBatch(index: index, reason: "mode \(String(mode, radix: 8)) is not a file mode") }
            default: break
            }
        }
    }
}

/// Path confinement: every path stays below the batch root. Directories are opened one
/// component at a time with O_NOFOLLOW|O_DIRECTORY, so a symlink anywhere on the way is
/// refused; final components are never followed (rename and unlink act on the link itself,
/// new files are created O_EXCL).
package enum PathGuard {
    package static func check(_ path: String, index: Int) throws(PMLLError) {
        guard !path.isEmpty else { throw .invalidBatch(index: index, reason: "empty path") }
        guard !path.hasPrefix("/") else { throw .invalidBatch(index: index, reason: "absolute path '\(path)'") }
        guard !path.utf8.contains(0), path.utf8.count < 4096 else { throw .invalidBatch(index: index, reason: "path contains NUL or is too long") }
        for component in path.split(separator: "/", omittingEmptySubsequences: false) {
            guard component != "..", component != ".", !component.isEmpty else {
                throw .invalidBatch(index: index, reason: "path '\(path)' leaves or does not name a place under the root")
            }
            guard component.utf8.count <= 255 else { throw .invalidBatch(index: index, reason: "a component of '\(path)' is longer than 255 bytes") }
            guard !component.hasPrefix(".pmll-") else { throw .invalidBatch(index: index, reason: "names starting with '.pmll-' are reserved for staging") }
        }
    }

    package static func split(_ path: String) -> (parent: [String], name: String) {
        let parts = path.split(separator: "/").map(String.init)
        return (Array(parts.dropLast()), parts.last!)
    }
}
