import ArgumentParser
import Foundation
import PMLL
import PMLLStressSupport

/// Whole-process cost of the `pmll` command against util-linux `flock(1)`: each command is
/// spawned, waited for with wait4 (CPU time from its rusage), and timed wall to wall; the
/// commands take turns in a rotating order so that all see the same machine. Peak RSS comes
/// from GNU time(1) when it is installed: a child spawned by this (large) process would report
/// this process's resident size as its own high-water mark.
struct StartupBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "startup", abstract: "Process start-up: pmll lock and status against flock(1).")

    @Option var runs = 60
    @Option(help: "Directory to work in: the pools and the flock file go into pmll-startup-bench inside it, removed afterwards.") var directory = "/tmp"
    @Option(help: "The pmll executable (default: next to this one).") var pmll: String?
    @Flag var json = false

    struct Row: Codable {
        let command: String
        let runs: Int
        let wallMedianMilliseconds: Double
        let wallP10Milliseconds: Double
        let wallP90Milliseconds: Double
        let cpuMedianMilliseconds: Double
        /// nil without GNU time(1).
        let peakRSSMedianKiB: Int?
    }

    struct Sample { var wall: [Double] = [], cpu: [Double] = [] }

    func run() throws {
        let pmll = self.pmll ?? (URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/pmll")
        guard access(pmll, X_OK) == 0 else { throw ToolError("no pmll executable at \(pmll) (build it: swift build -c release --product pmll)") }
        let directory = try benchWorkDirectory(in: self.directory, tag: "pmll-startup-bench")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let lockPool = directory + "/lock.pool", statusPool = directory + "/status.pool", flockFile = directory + "/flock"
        _ = try Pool.open(path: lockPool)
        do {
            let pool = try Pool.open(path: statusPool)
            for i in 0..<1000 { _ = try pool.lock(named: "pkg/\(i)", level: .package) }
        }
        // `pmll flock` has no --pool (as flock(1)): its pool comes from the environment.
        setenv("PMLL_POOL", lockPool, 1)
        let commands: [(String, [String])] = [
            ("/bin/true", ["/bin/true"]),
            ("flock FILE /bin/true", ["/usr/bin/flock", flockFile, "/bin/true"]),
            ("pmll lock NAME -- /bin/true", [pmll, "lock", "--pool", lockPool, "x", "--", "/bin/true"]),
            ("pmll flock FILE /bin/true", [pmll, "flock", flockFile, "/bin/true"]),
            ("pmll --help", [pmll, "--help"]),
            ("pmll status (1,000 locks)", [pmll, "status", "--pool", statusPool]),
        ]
        var samples = [Sample](repeating: Sample(), count: commands.count)
        for round in -3..<runs {
            for k in commands.indices {
                let index = (k + max(round, 0)) % commands.count
                let (wall, cpu) = try Self.measure(commands[index].1)
                if round >= 0 {
                    samples[index].wall.append(wall)
                    samples[index].cpu.append(cpu)
                }
            }
        }
        let rows = try commands.indices.map { i in
            Row(command: commands[i].0, runs: runs, wallMedianMilliseconds: quantile(samples[i].wall, 0.5), wallP10Milliseconds: quantile(samples[i].wall, 0.1),
                wallP90Milliseconds: quantile(samples[i].wall, 0.9), cpuMedianMilliseconds: quantile(samples[i].cpu, 0.5),
                peakRSSMedianKiB: try Self.peakRSS(commands[i].1, scratch: directory + "/rss"))
        }
        if json { try printJSONRows(rows); return }
        var table = [["command", "runs", "wall p50 ms", "wall p10-p90 ms", "CPU p50 ms", "peak RSS MiB"]]
        for r in rows {
            table.append([r.command, "\(r.runs)", String(format: "%.2f", r.wallMedianMilliseconds),
                          String(format: "%.2f-%.2f", r.wallP10Milliseconds, r.wallP90Milliseconds),
                          String(format: "%.2f", r.cpuMedianMilliseconds), r.peakRSSMedianKiB.map { String(format: "%.1f", Double($0) / 1024) } ?? "-"])
        }
        print(TextTable.render(table))
        let flock = rows[1], lock = rows[2], pmllFlock = rows[3], status = rows[5]
        print(String(format: "pmll lock / flock: wall %.2fx (target at most 2), CPU %.2fx; pmll flock / flock: wall %.2fx, CPU %.2fx; pmll status on 1,000 locks: %.1f ms (target under 50)",
                     lock.wallMedianMilliseconds / flock.wallMedianMilliseconds, lock.cpuMedianMilliseconds / flock.cpuMedianMilliseconds,
                     pmllFlock.wallMedianMilliseconds / flock.wallMedianMilliseconds, pmllFlock.cpuMedianMilliseconds / flock.cpuMedianMilliseconds,
                     status.wallMedianMilliseconds))
    }

    /// Median peak RSS (KiB) of 5 runs under GNU time(1), nil if it is not installed.
    static func peakRSS(_ argv: [String], scratch: String) throws -> Int? {
        guard access("/usr/bin/time", X_OK) == 0 else { return nil }
        var values: [Int] = []
        for _ in 0..<5 {
            _ = try measure(["/usr/bin/time", "-f", "%M", "-o", scratch] + argv)
            guard let text = try? String(contentsOfFile: scratch, encoding: .utf8), let kib = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { return nil }
            values.append(kib)
        }
        return values.sorted()[values.count / 2]
    }

    /// Wall and CPU milliseconds (user + system) of one run, output discarded.
    static func measure(_ argv: [String]) throws -> (Double, Double) {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var pid: pid_t = 0
        let start = monotonicNanoseconds()
        let rc = posix_spawn(&pid, cArgs[0]!, &actions, nil, cArgs, environ)
        guard rc == 0 else { throw ToolError("cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
        let wall = Double(monotonicNanoseconds() - start) / 1e6
        guard status == 0 else { throw ToolError("\(argv.joined(separator: " ")) exited with status \(status)") }
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e3 + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e3
        return (wall, cpu)
    }
}

private func quantile(_ values: [Double], _ q: Double) -> Double {
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * q + 0.5))]
}
