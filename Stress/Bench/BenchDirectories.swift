import ArgumentParser
import CPMLLPeers
import Foundation

/// The directories a benchmark compares, one per filesystem (`--directory`, repeatable).
struct BenchDirectories: ParsableArguments {
    @Option(help: "Directories to run in (one per filesystem). Default: /dev/shm and /var/tmp.")
    var directory: [String] = []

    /// Runs `body` in each directory, created empty (default: `/dev/shm/TAG`, `/var/tmp/TAG`),
    /// with the name of its filesystem; removes the directory afterwards.
    func forEach(tag: String, _ body: (_ directory: String, _ filesystem: String) throws -> Void) throws {
        for dir in directory.isEmpty ? ["/dev/shm/\(tag)", "/var/tmp/\(tag)"] : directory {
            try? FileManager.default.removeItem(atPath: dir)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try body(dir, filesystemType(dir))
            try? FileManager.default.removeItem(atPath: dir)
        }
    }
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
        for dir in directory.isEmpty ? ["/dev/shm/\(tag)", "/var/tmp/\(tag)"] : directory {
            try? FileManager.default.removeItem(atPath: dir)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try await body(dir, filesystemType(dir))
            try? FileManager.default.removeItem(atPath: dir)
        }
    }
}
