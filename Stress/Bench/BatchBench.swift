import ArgumentParser
import CPMLL
import CPMLLPeers
import Foundation
import PMLL
import PMLLStressSupport

/// File batches: io_uring vs a 16-thread syscall pool (the two PMLL backends) vs plain
/// sequential syscalls, same files, same run.
struct BatchBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "batch", abstract: "File batches: io_uring vs thread pool vs sequential syscalls.")

    @OptionGroup var directories: BenchDirectories
    @Option var rounds = 3
    @Option(help: "replace200, replace10 (a small batch: per-file durability), create2000; default replace200 and create2000.")
    var workload: [Workload] = [.replace200, .create2000]
    @Flag(help: "Also print where each PMLL method's time went (median per phase of an atomic batch).") var phases = false
    @Flag(help: "PMLL processes apply one untimed batch first, as a long-lived process would have.") var warm = false
    @Flag var json = false

    struct Row: Codable {
        let directory: String
        let filesystem: String
        let workload: String
        let method: String
        let milliseconds: Double
        /// CPU time (user + system, all threads) the method used, median.
        let cpuMilliseconds: Double
        let speedupOverSequential: Double
        let speedupOverThreadPool: Double
    }

    static let methods = ["sequential syscalls", "pmll batch, io_uring", "pmll batch, 16 threads"]

    func validate() throws {
        if rounds < 1 { throw ValidationError("--rounds must be at least 1") }
    }

    func run() throws {
        var rows: [Row] = []
        var phaseTable = [["fs", "workload", "method", "journal", "stage", "apply", "commit", "clean-up (ms, medians)"]]
        var allocation: [AllocationProbe] = []
        try directories.forEach(tag: "pmll-batchbench") { dir, fs in
            // ext4 compares whole seconds: inodes freed in the current second do not count as
            // recent yet, so the probe waits for the next one to see what the run will see.
            let withoutJournal = Self.ext4WithoutJournal(dir)
            if withoutJournal { usleep(1_100_000) }
            let before = peers_inode_alloc_ns(dir, 50)
            var creations = Set<String>()
            defer {
                allocation.append(AllocationProbe(directory: dir, filesystem: fs, ext4WithoutJournal: withoutJournal, before: before,
                                                  after: peers_inode_alloc_ns(dir, 50), creations: creations.sorted()))
            }
            for workload in workload {
                // Rounds interleave the methods, in a rotating order, and each method is
                // compared with the sequential peer of its own round: a disk whose speed drifts
                // (this VM's does, by 2-3x over seconds) then skews every method alike.
                var samples = [[Double]](repeating: [], count: Self.methods.count)
                var cpu = [[Double]](repeating: [], count: Self.methods.count)
                var ratios = [[Double]](repeating: [], count: Self.methods.count)
                var overThreads = [[Double]](repeating: [], count: Self.methods.count)
                var phaseSamples = [[[Double]]](repeating: [[Double]](repeating: [], count: 5), count: Self.methods.count)
                for round in 0..<rounds {
                    var times = [Double](repeating: 0, count: Self.methods.count)
                    for k in 0..<Self.methods.count {
                        let m = (k + round) % Self.methods.count
                        let (time, cpuTime, phases, creation) = try measure(m, workload, dir)
                        if let creation { creations.insert(creation) }
                        times[m] = time
                        cpu[m].append(cpuTime)
                        for (i, p) in phases.enumerated() { phaseSamples[m][i].append(p) }
                    }
                    for m in times.indices {
                        samples[m].append(times[m])
                        ratios[m].append(times[0] / times[m])
                        overThreads[m].append(times[2] / times[m])
                    }
                }
                for (m, method) in Self.methods.enumerated() where m > 0 && workload.replaces {
                    phaseTable.append([fs, workload.rawValue, method] + phaseSamples[m].map { String(format: "%.2f", Self.median($0) / 1e6) })
                }
                for (m, method) in Self.methods.enumerated() {
                    rows.append(Row(directory: dir, filesystem: fs, workload: workload.title,
                                    method: method, milliseconds: Self.median(samples[m]) / 1e6, cpuMilliseconds: Self.median(cpu[m]) / 1e6, speedupOverSequential: Self.median(ratios[m]), speedupOverThreadPool: Self.median(overThreads[m])))
                }
            }
        }
        if json { try printJSONRows(Report(rows: rows, inodeAllocation: allocation)); return }
        var table = [["fs", "workload", "method", "ms (median of \(rounds))", "CPU ms", "vs sequential", "vs 16 threads (medians of per-round ratios)"]]
        for r in rows {
            table.append([r.filesystem, r.workload, r.method, String(format: "%.2f", r.milliseconds), String(format: "%.2f", r.cpuMilliseconds),
                          String(format: "%.2fx", r.speedupOverSequential), String(format: "%.2fx", r.speedupOverThreadPool)])
        }
        print(TextTable.render(table))
        if phases { print(""); print(TextTable.render(phaseTable)) }
        print("")
        for probe in allocation { print(probe.line) }
    }

    struct Report: Codable {
        let rows: [Row]
        let inodeAllocation: [AllocationProbe]
    }

    /// What one inode allocation cost in a directory before and after its run. Every method
    /// allocates one inode per file, so this is the part of the figures that belongs to the
    /// filesystem's state rather than to the method.
    struct AllocationProbe: Codable {
        let directory: String
        let filesystem: String
        /// The filesystem is ext4 without a journal (what makes PMLL create files unnamed).
        let ext4WithoutJournal: Bool
        let beforeMicroseconds: Double
        let afterMicroseconds: Double
        /// How the PMLL batches created files (`BatchReport.creation`).
        let creations: [String]

        init(directory: String, filesystem: String, ext4WithoutJournal: Bool, before: UInt64, after: UInt64, creations: [String]) {
            self.directory = directory
            self.filesystem = filesystem
            self.ext4WithoutJournal = ext4WithoutJournal
            beforeMicroseconds = Double(before) / 1e3
            afterMicroseconds = Double(after) / 1e3
            self.creations = creations
        }

        var line: String {
            var text = String(format: "%@ (%@): one inode allocation took %.1f µs before the run, %.1f µs after; PMLL created files %@",
                              directory, filesystem, beforeMicroseconds, afterMicroseconds, creations.joined(separator: " and "))
            if ext4WithoutJournal {
                text += ". This ext4 has no journal: it passes over every inode freed in the last 60-360 s when it allocates one, so each allocation costs CPU in proportion to recent deletions (the run's own included), for every method alike"
            }
            return text
        }
    }

    /// Nanoseconds of wall time and of CPU time, for an atomic PMLL batch the nanoseconds of its
    /// phases, and for a PMLL batch how it created files.
    func measure(_ method: Int, _ workload: Workload, _ dir: String) throws -> (Double, Double, [Double], String?) {
        if method == 0 {
            let (time, cpu) = try sequential(workload, dir)
            return (time, cpu, [], nil)
        }
        let backend = method == 1 ? "uring" : "syscalls"
        let child = try BenchChild(["batch-child", "--backend", backend, "--directory", dir, "--workload", workload.rawValue] + (warm ? ["--warm"] : []))
        guard let line = child.readLine() else { throw ToolError("batch child failed") }
        let words = line.split(separator: " ")
        let numbers = words.dropLast().compactMap { Double($0) }
        guard numbers.count == 7, let creation = words.last.map(String.init) else { throw ToolError("batch child printed '\(line)'") }
        child.process.waitUntilExit()
        return (numbers[0], numbers[1], workload.replaces ? Array(numbers[2...]) : [], creation == "named" ? "by name" : creation)
    }

    static func median(_ samples: [Double]) -> Double { samples.sorted()[samples.count / 2] }

    /// The library's own test (`pmll_ext4_without_journal`), on the directory.
    static func ext4WithoutJournal(_ dir: String) -> Bool {
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { if fd >= 0 { close(fd) } }
        return fd >= 0 && pmll_ext4_without_journal(fd) == 1
    }

    /// The plain way: one file after another (write a temporary, fsync, rename), then one
    /// directory fsync; or plain creates.
    func sequential(_ workload: Workload, _ dir: String) throws -> (Double, Double) {
        let tree = try BatchChild.prepare(workload, dir, tag: "seq")
        let data = [UInt8](repeating: 0x61, count: workload.size)
        let start = monotonicNanoseconds()
        let cpuStart = peers_process_cpu_ns()
        let dfd = open(tree, O_RDONLY | O_DIRECTORY)
        defer { close(dfd) }
        for i in 0..<workload.files {
            let name = "f\(i)"
            if workload.replaces {
                let fd = openat(dfd, name + ".tmp", O_CREAT | O_EXCL | O_WRONLY, 0o644)
                _ = write(fd, data, data.count)
                fsync(fd)
                close(fd)
                renameat(dfd, name + ".tmp", dfd, name)
            } else {
                let fd = openat(dfd, name, O_CREAT | O_EXCL | O_WRONLY, 0o644)
                _ = write(fd, data, data.count)
                close(fd)
            }
        }
        if workload.replaces { fsync(dfd) }
        return (Double(monotonicNanoseconds() - start), Double(peers_process_cpu_ns() - cpuStart))
    }
}

/// What a round applies: replaces are atomic and durable (batches of 16 files or more make
/// them durable with one syncfs, smaller ones with an fsync per file); creates are best effort,
/// not durable.
enum Workload: String, ExpressibleByArgument, Sendable {
    case replace200, replace10, create2000

    var replaces: Bool { self != .create2000 }
    var files: Int { self == .replace200 ? 200 : self == .replace10 ? 10 : 2000 }
    var size: Int { replaces ? 4096 : 100 }
    var title: String { replaces ? "\(files) atomic replaces of 4 KiB, fsync" : "\(files) creates of 100 B, no fsync" }
}

struct BatchChild: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "batch-child", shouldDisplay: false)
    @Option var backend: String
    @Option var directory: String
    @Option var workload: Workload
    @Flag var warm = false

    static func prepare(_ workload: Workload, _ dir: String, tag: String) throws -> String {
        let tree = dir + "/tree-\(tag)-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        if workload.replaces {
            for i in 0..<workload.files { _ = FileManager.default.createFile(atPath: tree + "/f\(i)", contents: Data(repeating: 0x62, count: 4096)) }
        }
        // The set-up's dirty data would otherwise ride on the first measured fsync.
        sync()
        return tree
    }

    func run() throws {
        setenv("PMLL_IO_BACKEND", backend, 1)
        let pool = try Pool.open(path: directory + "/batch.pool")
        let batch: FileBatch
        if workload.replaces {
            batch = FileBatch((0..<workload.files).map { .replace(path: "f\($0)", data: [UInt8](repeating: 0x61, count: workload.size), mode: 0o644) })
        } else {
            batch = FileBatch((0..<workload.files).map { .write(path: "f\($0)", data: [UInt8](repeating: 0x61, count: workload.size), mode: 0o644) })
        }
        if warm {
            _ = try pool.apply(batch, root: try Self.prepare(workload, directory, tag: backend + "-warm"), atomic: workload.replaces, durable: workload.replaces)
        }
        let tree = try Self.prepare(workload, directory, tag: backend)
        let start = monotonicNanoseconds()
        let cpuStart = peers_process_cpu_ns()
        let report = try pool.apply(batch, root: tree, atomic: workload.replaces, durable: workload.replaces)
        let elapsed = monotonicNanoseconds() - start
        let cpu = peers_process_cpu_ns() - cpuStart
        guard report.backend.rawValue == backend, report.results.allSatisfy(\.isApplied) else { throw ToolError("batch ran on \(report.backend) or failed") }
        let p = report.phases
        sayLine("\(elapsed) \(cpu) \(p.journal) \(p.stage) \(p.apply) \(p.commit) \(p.cleanUp) \(report.creation.rawValue)")
    }
}
