import ArgumentParser
import CPMLL
import Foundation

/// `pmll-bench`: lock benchmarks with peers measured in the same run (Docs/Benchmarks.md).
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmll-bench",
        abstract: "PMLL benchmarks with peers measured in the same run (locks: glibc robust mutex, flock, OFD; queue: SQLite WAL; tx: libpmemobj).",
        subcommands: [Locks.self, AsyncBench.self, QueueBench.self, AuditBench.self, TransactionBench.self, ScaleBench.self, StartupBench.self, EtcdBench.self, BatchBench.self, BatchChild.self, ContendChild.self, TakeoverChild.self, ReadWriteChild.self, StarveChild.self, QueueChild.self, TransactionChild.self],
        defaultSubcommand: Locks.self
    )

    /// Set by ``BenchChild`` to the parent's pid.
    static let parentVariable = "PMLL_BENCH_PARENT"
}

/// The entry: a benchmark child first ties its life to its parent's, then ArgumentParser runs.
@main
enum BenchEntry {
    static func main() async {
        if let parent = ProcessInfo.processInfo.environment[Bench.parentVariable].flatMap({ Int32($0) }),
           CommandLine.arguments.count > 1, CommandLine.arguments[1].hasSuffix("-child") {
            _ = pmll_die_with_parent(parent)
        }
        await Bench.main()
    }
}

struct Locks: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "locks", abstract: "Run the lock benchmarks and print a table (or JSON).")

    @OptionGroup var directories: BenchDirectories
    @Option var iterations = 2_000_000
    @Option var seconds = 2.0
    @Option var rounds = 200
    @Option(help: "Run only these parts (uncontended, contended, takeover, mix, starvation); default all.") var only: [String] = []
    @Option(help: "The pmll executable, holder of the takeover's -cli rows (default: next to this one).") var pmll: String?
    @Flag var json = false

    private var pmllExecutable: String {
        pmll ?? besideThisExecutable("pmll")
    }

    func run() throws {
        var report = Report(command: CommandLine.arguments.joined(separator: " "))
        try directories.forEach(tag: "pmll-bench") { dir, fs in
            var section = Report.Section(directory: dir, filesystem: fs)
            func runs(_ part: String) -> Bool { only.isEmpty || only.contains(part) }
            if runs("uncontended") { section.uncontended = try Uncontended.run(directory: dir, iterations: iterations) }
            for processes in [2, 4] where runs("contended") {
                for kind in ["pmll", "pthread"] {
                    section.contended.append(try Contended.run(kind: kind, processes: processes, seconds: seconds, directory: dir))
                }
            }
            for kind in Takeover.kinds where runs("takeover") {
                section.takeover.append(try Takeover.run(kind: kind, rounds: rounds, directory: dir, pmll: pmllExecutable))
            }
            for processes in [2, 4] where runs("mix") {
                for kind in ReadWriteBench.kinds {
                    section.readWriteMix.append(try ReadWriteBench.mix(kind: kind, processes: processes, readPercent: 90, seconds: seconds, directory: dir))
                }
            }
            for kind in ReadWriteBench.kinds where runs("starvation") {
                section.writerStarvation.append(try ReadWriteBench.starvation(kind: kind, directory: dir))
            }
            report.sections.append(section)
        }
        if json {
            try printJSONRows(report)
        } else {
            print(report.table())
        }
        if report.sections.contains(where: { $0.contended.contains(where: \.exclusionViolated) || $0.readWriteMix.contains(where: \.exclusionViolated) }) {
            throw ExitCode(1)
        }
    }
}

struct ContendChild: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "contend-child", shouldDisplay: false)
    @Option var kind: String
    @Option var directory: String
    @Option var index: Int
    func run() throws { try Contended.child(kind: kind, directory: directory, index: index) }
}

struct ReadWriteChild: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rw-child", shouldDisplay: false)
    @Option var kind: String
    @Option var directory: String
    @Option var index: Int
    @Option var readPercent: Int
    func run() throws { try ReadWriteBench.child(kind: kind, directory: directory, index: index, readPercent: readPercent) }
}

struct StarveChild: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "starve-child", shouldDisplay: false)
    @Option var kind: String
    @Option var directory: String
    @Option var index: Int
    @Option var holdMicroseconds: Int
    func run() throws { try ReadWriteBench.starveChild(kind: kind, directory: directory, index: index, holdMicroseconds: holdMicroseconds) }
}

struct TakeoverChild: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "takeover-child", shouldDisplay: false)
    @Option var kind: String
    @Option var directory: String
    @Option var role: String
    func run() throws { try Takeover.child(kind: kind, directory: directory, role: role) }
}

struct Report: Codable {
    struct Section: Codable {
        let directory: String
        let filesystem: String
        var uncontended: [Uncontended.Row] = []
        var contended: [Contended.Row] = []
        var takeover: [Takeover.Row] = []
        var readWriteMix: [ReadWriteBench.MixRow] = []
        var writerStarvation: [ReadWriteBench.StarvationRow] = []
    }
    let command: String
    var sections: [Section] = []

    func table() -> String {
        var out = ""
        for s in sections {
            out += "\n== \(s.directory) (\(s.filesystem))\n\nUncontended lock+unlock, ns per pair (median of 5)\n"
            let pthread = s.uncontended.first { $0.name.hasPrefix("glibc robust") }?.nanosecondsPerPair ?? .nan
            let rwlock = s.uncontended.first { $0.name.hasPrefix("glibc pshared rwlock") }?.nanosecondsPerPair ?? .nan
            for row in s.uncontended {
                // Shared holds are compared with the rwlock's read side, the rest with the mutex.
                let sharedKind = row.name.contains("shared (") || row.name.contains("LOCK_SH") || row.name.hasPrefix("glibc pshared rwlock")
                out += pad(row.name, 42) + String(format: "%10.1f ns   ratio to glibc %@ %.2f\n", row.nanosecondsPerPair,
                                                  sharedKind ? "rwlock read" : "robust mutex", row.nanosecondsPerPair / (sharedKind ? rwlock : pthread))
            }
            out += "\nContended (P processes, one lock, empty critical section)\n"
            out += pad("kind", 10) + pad("P", 4) + pad("ops/s", 14) + pad("ratio", 8) + pad("min share", 11) + pad("max share", 11) + pad("Jain", 7) + "exclusion\n"
            for row in s.contended {
                let peer = s.contended.first { $0.kind == "pthread" && $0.processes == row.processes }?.operationsPerSecond ?? .nan
                out += pad(row.kind, 10) + pad("\(row.processes)", 4) + pad(String(format: "%.0f", row.operationsPerSecond), 14)
                    + pad(String(format: "%.2f", row.operationsPerSecond / peer), 8)
                    + pad(String(format: "%.3f", row.minShare), 11) + pad(String(format: "%.3f", row.maxShare), 11)
                    + pad(String(format: "%.3f", row.jainFairness), 7) + (row.exclusionViolated ? "VIOLATED" : "ok") + "\n"
            }
            out += "\nSIGKILL of the holder until a waiter owns the lock (-cli: the holder is `pmll lock` running sleep; exit: until the holder's pidfd fires, no waiter)\n"
            for row in s.takeover {
                out += pad(row.kind, 10) + String(format: "p50 %8.1f us   p99 %8.1f us   max %8.1f us   owner death reported %d/%d\n",
                                                  row.p50Microseconds, row.p99Microseconds, row.maxMicroseconds, row.ownerDeathReported, row.rounds)
            }
            out += "\nReader-heavy mix (90 % shared, empty sections), ops/s and ratio to glibc pshared rwlock\n"
            for row in s.readWriteMix {
                let peer = s.readWriteMix.first { $0.kind == "rwlock" && $0.processes == row.processes }?.operationsPerSecond ?? .nan
                out += pad(row.kind, 10) + pad("P=\(row.processes)", 6) + pad(String(format: "%.0f", row.operationsPerSecond), 14)
                    + pad(String(format: "%.2f", row.operationsPerSecond / peer), 8)
                    + pad(String(format: "writes/s %.0f", row.writesPerSecond), 22) + (row.exclusionViolated ? "VIOLATED" : "ok") + "\n"
            }
            if let first = s.writerStarvation.first {
                out += "\nWriter wait under a stream of \(first.readers) overlapping readers (\(first.readerHoldMicroseconds) us holds), \(first.attempts) attempts, capped at \(first.capSeconds) s\n"
            }
            for row in s.writerStarvation {
                out += pad(row.kind, 10) + String(format: "median %9.1f ms   max %9.1f ms   starved %d/%d\n",
                                                  row.medianWaitMilliseconds, row.maxWaitMilliseconds, row.starved, row.attempts)
            }
        }
        return out
    }

    private func pad(_ s: String, _ n: Int) -> String { s.padding(toLength: max(n, s.count + 1), withPad: " ", startingAt: 0) }
}
