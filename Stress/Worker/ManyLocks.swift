import ArgumentParser
import Glibc
import PMLL

/// Takes and releases locks `PREFIX-0` … `PREFIX-(count-1)` once each (the lock table grows
/// when they do not fit), then takes each lock of `--check` prefixes made by other processes
/// as well: every process must find every entry, wherever it lies.
struct ManyLocks: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "many-locks")
    @Option var pool: String
    @Option var prefix: String
    @Option var count = 100
    @Option(help: "Prefixes of other workers' locks to take afterwards (same count).") var check: [String] = []
    @Option(help: "Locks of each checked prefix (default: --count).") var checkCount: Int?
    @Option(help: "Before the check, wait until this file exists (the others made theirs).") var waitFor: String?

    func run() throws {
        let pool = try Pool.open(path: pool)
        var seen = 0
        for i in 0..<count {
            try pool.lock(named: "\(prefix)-\(i)", level: .filesystem).withLock { _ in }
        }
        emit(["event": "made", "capacity": Int(pool.status().lockCapacity)])
        if let waitFor {
            while access(waitFor, F_OK) != 0 { usleep(5_000) }
        }
        for other in check {
            for i in 0..<(checkCount ?? count) {
                guard try pool.existingLock(named: "\(other)-\(i)") != nil else {
                    emit(["event": "missing", "name": "\(other)-\(i)"])
                    throw ExitCode(1)
                }
                try pool.lock(named: "\(other)-\(i)", level: .filesystem).withLock { _ in }
                seen += 1
            }
        }
        emit(["event": "done", "made": count, "seen": seen, "capacity": Int(pool.status().lockCapacity)])
    }
}
