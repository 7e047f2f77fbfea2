import CPMLL
import Foundation
import PMLL
import PMLLCore
import Testing

/// A durable commit writes back the pages it changed, and the page cache decides how large a
/// "page" is: since Linux 6.16 ext4 caches files in folios of up to 2 MiB, written back whole.
/// A pool's mapping is MADV_RANDOM so that its faults read 4 KiB folios (Docs/PoolFormat.md
/// "Pages in the page cache").
@Suite("Page cache")
struct PageCacheTests {
    /// Bytes this thread has dirtied in the page cache so far (Linux accounts a folio's whole
    /// size to the task that dirties it).
    static func bytesDirtied() throws -> Int {
        let io = try String(contentsOfFile: "/proc/thread-self/io", encoding: .utf8)
        let line = try #require(io.split(separator: "\n").first { $0.hasPrefix("write_bytes:") })
        return try #require(Int(line.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)))
    }

    static let keys = 100_000

    /// A pool on a disk whose key index grew to 262,144 slots (64 MiB, mapped from start to
    /// end, which read-around turns into large folios).
    static func grownPool(_ path: String) throws -> Pool {
        var options = PoolOptions()
        options.keyCapacity = 1_024
        let pool = try Pool.open(path: path, options: options)
        let value = [UInt8](repeating: 7, count: 100), batch = 500
        for first in stride(from: 0, to: keys, by: batch) {
            try pool.transaction { tx in for k in first..<(first + batch) { try tx.set("pkg/\(k)", value) } }
        }
        #expect(try pool.storeUsage().keyCapacity >= 262_144, "the index grew")
        return pool
    }

    /// Bytes dirtied per single-key commit at random keys.
    static func dirtiedPerCommit(_ pool: Pool) throws -> Int {
        var generator = SystemRandomNumberGenerator()
        // The pool's first update makes its redo log (16 MiB written once): not a commit's cost.
        try pool.transaction { tx in try tx.set("pkg/0", [UInt8](repeating: 9, count: 100)) }
        let commits = 50
        let before = try bytesDirtied()
        for _ in 0..<commits {
            let key = "pkg/\(Int.random(in: 0..<keys, using: &generator))"
            try pool.transaction { tx in try tx.set(key, [UInt8](repeating: 8, count: 100)) }
        }
        return (try bytesDirtied() - before) / commits
    }

    static func diskDirectory(_ name: String) throws -> String {
        let directory = "/var/tmp/pmll-test-\(getpid())-\(name)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    /// Single-key commits on a grown pool dirty a few 4 KiB pages each (about 22 KB here: log,
    /// slot, headers), not megabytes (1.1 MB each with read-around).
    @Test func aCommitOnAGrownPoolDirtiesPagesNotLargeFolios() throws {
        let directory = try Self.diskDirectory("folios")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let pool = try Self.grownPool(directory + "/f.pool")
        let perCommit = try Self.dirtiedPerCommit(pool)
        #expect(perCommit <= 64 << 10, "\(perCommit) bytes dirtied per single-key commit")
    }

    /// A restore writes the pool image with large writes, which the page cache keeps in large
    /// folios; it drops them once they are durable, so the restored pool's commits dirty
    /// pages as small as the original's.
    @Test func aRestoredPoolDirtiesPagesNotLargeFolios() throws {
        let directory = try Self.diskDirectory("restore")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            let pool = try Self.grownPool(directory + "/f.pool")
            _ = try pool.backup(to: directory + "/f.backup")
        }
        _ = try Pool.restore(from: directory + "/f.backup", to: directory + "/g.pool")
        let restored = try Pool.open(path: directory + "/g.pool")
        let perCommit = try Self.dirtiedPerCommit(restored)
        #expect(perCommit <= 64 << 10, "\(perCommit) bytes dirtied per single-key commit")
    }
}
