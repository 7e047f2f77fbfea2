import ArgumentParser
import CPMLL
import CPMLLPeers
import Foundation
import Histogram
import PMLL
import PMLLStressSupport

/// Lookups that stay flat while the store grows (issue 19): a pool created with the defaults
/// (4,096 key slots, 16 MiB) is loaded with KEYS keys of 100-byte values; get and set latency
/// are measured on random keys at each size in `--at`, and the load itself is timed (keys per
/// second, growths, the longest commit: the one that moved the index). SQLite (WAL,
/// synchronous=FULL, a WITHOUT ROWID table keyed by the same strings) does the same in the
/// same run.
struct ScaleBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "scale", abstract: "Get/set latency from 1,000 to 1,000,000 keys on a growing pool.")

    @OptionGroup var directories: BenchDirectories
    @Option(help: "Key counts to measure at (ascending).") var at: [Int] = [1000, 100_000, 1_000_000]
    @Option(help: "Keys per loading transaction.") var batch = 250
    @Option(help: "Random gets measured at each size.") var gets = 50_000
    @Option(help: "Random single-key sets measured at each size.") var sets = 10_000
    @Option var seed: UInt64 = 19
    @Option(help: "Value size in bytes (PMLL keeps key + value up to 216 bytes in the key slot, 88 in a pool of 128-byte slots, longer ones in blocks; SQLite always stores 100).") var valueBytes = 100
    @Flag(help: "Also measure a pool of 128-byte key slots (peer pmll-128, the layout of pools created before 2026-12-05) in the same run.")
    var narrowSlots = false
    @Flag var json = false

    var peers: [String] { ["pmll"] + (narrowSlots ? ["pmll-128"] : []) + ["sqlite"] }

    struct Row: Codable {
        let filesystem: String
        let peer: String
        let keys: Int
        let getP50Microseconds: Double
        let getP99Microseconds: Double
        let setP50Microseconds: Double
        let setP99Microseconds: Double
        let fileBytes: Int
        let keySlots: Int
        let growths: Int
        /// Loading up to this size: keys per second, and the longest commit.
        let loadKeysPerSecond: Double
        let longestCommitMilliseconds: Double
    }

    static func key(_ i: Int) -> String { "pkg/\(i)" }

    func measure(fs: String, peer: String, load: (Range<Int>) throws -> Void, get: (Int) throws -> Void, set: (Int) throws -> Void,
                 usage: () throws -> (file: Int, slots: Int, growths: Int)) throws -> [Row] {
        var rows: [Row] = []
        var rng = SplitMix(seed: seed)
        var loaded = 0
        for target in at {
            let start = monotonicNanoseconds()
            var longest: Int64 = 0
            while loaded < target {
                let range = loaded..<min(target, loaded + batch)
                let t0 = monotonicNanoseconds()
                try load(range)
                longest = max(longest, monotonicNanoseconds() - t0)
                loaded = range.upperBound
            }
            let loadSeconds = Double(monotonicNanoseconds() - start) / 1e9
            // The load leaves up to a GiB of dirty pages on a disk: the sets should not share
            // the disk with their writeback.
            sync()
            var getHistogram = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
            for _ in 0..<gets {
                let k = Int(rng.next() % UInt64(loaded))
                let t0 = monotonicNanoseconds()
                try get(k)
                _ = getHistogram.record(UInt64(monotonicNanoseconds() - t0))
            }
            var setHistogram = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
            for _ in 0..<sets {
                let k = Int(rng.next() % UInt64(loaded))
                let t0 = monotonicNanoseconds()
                try set(k)
                _ = setHistogram.record(UInt64(monotonicNanoseconds() - t0))
            }
            let u = try usage()
            rows.append(Row(filesystem: fs, peer: peer, keys: loaded,
                            getP50Microseconds: Double(getHistogram.valueAtPercentile(50)) / 1000,
                            getP99Microseconds: Double(getHistogram.valueAtPercentile(99)) / 1000,
                            setP50Microseconds: Double(setHistogram.valueAtPercentile(50)) / 1000,
                            setP99Microseconds: Double(setHistogram.valueAtPercentile(99)) / 1000,
                            fileBytes: u.file, keySlots: u.slots, growths: u.growths,
                            loadKeysPerSecond: Double(target - (rows.last?.keys ?? 0)) / loadSeconds,
                            longestCommitMilliseconds: Double(longest) / 1e6))
        }
        return rows
    }

    func run() throws {
        var rows: [Row] = []
        try directories.forEach(tag: "pmll-scale") { dir, fs in
            for peer in peers {
                let load: (Range<Int>) throws -> Void, get: (Int) throws -> Void, set: (Int) throws -> Void
                var usage: () throws -> (file: Int, slots: Int, growths: Int)
                var finish: () throws -> Void
                if peer.hasPrefix("pmll") {
                    var options = PoolOptions()
                    if peer == "pmll-128" { options.storeVersion = PMLL_STORE_VERSION_NARROW }
                    let file = dir + "/\(peer).pool"
                    let pool = try Pool.open(path: file, options: options)
                    load = { range in
                        try pool.transaction(isolation: .none) { tx in
                            for i in range { try tx.set(Self.key(i), [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: valueBytes)) }
                        }
                    }
                    get = { i in guard try pool.value(for: Self.key(i))?.count == valueBytes else { throw ToolError("key \(i) lost") } }
                    let value = [UInt8](repeating: 9, count: valueBytes)
                    set = { i in try pool.transaction(isolation: .none) { tx in try tx.set(Self.key(i), value) } }
                    usage = { let u = try pool.storeUsage(); return (u.fileBytes, u.keyCapacity, u.growths) }
                    finish = {
                        guard try pool.check().ok else { throw ToolError("pmll check found problems") }
                        // The next peer should not share the memory with this one's file.
                        try? FileManager.default.removeItem(atPath: file)
                    }
                } else {
                    guard let kv = peers_sqlite_kv_open(dir + "/scale.sqlite") else { throw ToolError("sqlite open failed") }
                    load = { range in guard peers_sqlite_kv_load(kv, Int32(range.lowerBound), Int32(range.upperBound)) == 0 else { throw ToolError("sqlite load failed") } }
                    get = { i in guard peers_sqlite_kv_get(kv, Int32(i)) == 100 else { throw ToolError("sqlite key \(i) lost") } }
                    set = { i in guard peers_sqlite_kv_set(kv, Int32(i)) == 0 else { throw ToolError("sqlite set failed") } }
                    usage = {
                        var st = stat()
                        var total = 0
                        for suffix in ["", "-wal"] where stat(dir + "/scale.sqlite" + suffix, &st) == 0 { total += Int(st.st_size) }
                        return (total, 0, 0)
                    }
                    finish = { peers_sqlite_kv_close(kv) }
                }
                rows += try measure(fs: fs, peer: peer, load: load, get: get, set: set, usage: usage)
                try finish()
            }
        }
        if json { try printJSONRows(rows); return }
        print("A default pool loaded with keys of \(valueBytes)-byte values (transactions of \(batch)); random gets and single-key sets at each size")
        var table = [["fs", "peer", "keys", "get p50 us", "get p99 us", "set p50 us", "set p99 us", "file MiB", "key slots", "growths", "load keys/s", "longest commit ms"]]
        for r in rows {
            table.append([r.filesystem, r.peer, "\(r.keys)", String(format: "%.2f", r.getP50Microseconds), String(format: "%.2f", r.getP99Microseconds),
                          String(format: "%.2f", r.setP50Microseconds), String(format: "%.2f", r.setP99Microseconds),
                          "\(r.fileBytes >> 20)", "\(r.keySlots)", "\(r.growths)", String(format: "%.0f", r.loadKeysPerSecond),
                          String(format: "%.1f", r.longestCommitMilliseconds)])
        }
        print(TextTable.render(table))
        for fs in Set(rows.map(\.filesystem)).sorted() {
            for peer in peers {
                let mine = rows.filter { $0.filesystem == fs && $0.peer == peer }
                guard let small = mine.first, let large = mine.last, large.keys > small.keys else { continue }
                print(String(format: "%@ %@: at %d keys vs %d: get p50 %.2fx, set p50 %.2fx%@", fs, peer, large.keys, small.keys,
                             large.getP50Microseconds / small.getP50Microseconds, large.setP50Microseconds / small.setP50Microseconds,
                             peer == "pmll" ? " (target: within 2x)" : ""))
            }
        }
    }
}
