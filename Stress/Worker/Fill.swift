import ArgumentParser
import PMLLStressSupport
import PMLL

/// Writes KEYS keys `PREFIX/i` in transactions of BATCH keys, with values of 10...MAX bytes
/// (``FillPattern``), then reads every one back: on a small pool, several of these grow the
/// store together, and each must find its keys wherever another process put the room.
struct Fill: ParsableCommand {
    @Option var pool: String
    @Option var prefix: String
    @Option var keys = 1000
    @Option var batch = 50
    @Option var maxValue = 2000
    @Option(help: "Every value exactly this long (instead of 10...max-value bytes).") var exactValue: Int?

    func value(_ i: Int) -> [UInt8] {
        exactValue.map { FillPattern.value(prefix: prefix, index: i, length: $0) } ?? FillPattern.value(prefix: prefix, index: i, maximum: maxValue)
    }

    func run() throws {
        let pool = try Pool.open(path: pool)
        var start = 0
        while start < keys {
            let range = start..<min(keys, start + batch)
            try pool.transaction(isolation: .none) { tx in
                for i in range { try tx.set("\(prefix)/\(i)", value(i)) }
            }
            start = range.upperBound
        }
        var bad = 0
        for i in 0..<keys where try pool.value(for: "\(prefix)/\(i)") != value(i) { bad += 1 }
        emit(["event": "done", "written": keys, "bad": bad, "growths": try pool.storeUsage().growths])
    }
}
