import ArgumentParser
import CPMLLPeers
import Foundation
import PMLLStressSupport

/// The directories a benchmark compares, one per filesystem (`--directory`, repeatable).
struct BenchDirectories: ParsableArguments {
    @Option(help: "Directories to run in, one per filesystem: each run works in a subdirectory of its own (TAG), created empty and removed afterwards; the directory itself is never emptied. Default: /dev/shm and /var/tmp.")
    var directory: [String] = []

    /// Runs `body` in `TAG` inside each directory (default: `/dev/shm`, `/var/tmp`), created
    /// empty, with the name of its filesystem; removes that subdirectory afterwards.
    func forEach(tag: String, _ body: (_ directory: String, _ filesystem: String) throws -> Void) throws {
        for parent in directory.isEmpty ? ["/dev/shm", "/var/tmp"] : directory {
            let dir = try benchWorkDirectory(in: parent, tag: tag)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try body(dir, filesystemType(dir))
        }
    }
}

/// `parent/tag`, created empty (a leftover of an earlier run of the same benchmark removed
/// first): the directory a benchmark writes its pools into and removes afterwards. Never
/// `parent` itself: `--directory /dev/shm` once meant "empty /dev/shm, then remove it", and
/// removed /var/tmp the same way.
func benchWorkDirectory(in parent: String, tag: String) throws -> String {
    guard !tag.isEmpty, !tag.contains("/") else { throw ToolError("bad benchmark tag '\(tag)'") }
    try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
    let dir = (parent.hasSuffix("/") ? parent : parent + "/") + tag
    try? FileManager.default.removeItem(atPath: dir)
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
    return dir
}

/// The filesystem's common name (statfs magic), for the report.
func filesystemType(_ path: String) -> String {
    let type = peers_filesystem_type(path)
    switch UInt32(truncatingIfNeeded: type) {
    case 0x0102_1994: return "tmpfs"
    case 0xEF53: return "ext4"
    case 0x5846_5342: return "xfs"
    case 0x9123_683E: return "btrfs"
    case 0x794C_7630: return "overlayfs"
    default: return String(format: "0x%x", UInt32(truncatingIfNeeded: type))
    }
}

/// Rows (or any report) as sorted, pretty JSON on stdout.
func printJSONRows<T: Encodable>(_ rows: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(rows), as: UTF8.self))
}

extension BenchDirectories {
    /// ``forEach(tag:_:)`` with an async body.
    func forEachAsync(tag: String, _ body: (_ directory: String, _ filesystem: String) async throws -> Void) async throws {
        for parent in directory.isEmpty ? ["/dev/shm", "/var/tmp"] : directory {
            let dir = try benchWorkDirectory(in: parent, tag: tag)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try await body(dir, filesystemType(dir))
        }
    }
}
