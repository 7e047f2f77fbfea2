import CPMLL
import Foundation
import PMLLStressSupport
import Histogram

func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// An executable built beside this benchmark (`pmll`, `pmll-bench-holder`).
func besideThisExecutable(_ name: String) -> String {
    URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().path + "/" + name
}

/// Spawns this executable with a subcommand; stdout is a pipe read line by line.
final class BenchChild {
    let process = Process()
    private let pipe = Pipe()
    private var buffer = Data()
    /// Bytes of `buffer` already searched for a newline (a child's result line is megabytes:
    /// searching it from the start at every read took seconds).
    private var searched = 0

    /// `executable`: default this benchmark's own executable. `quiet`: its standard error
    /// discarded (a `pmll lock` holder warns at every round that the previous holder died).
    init(_ arguments: [String], executable: String? = nil, quiet: Bool = false) throws {
        process.executableURL = executable.map { URL(fileURLWithPath: $0) } ?? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        process.standardOutput = pipe
        if quiet { process.standardError = FileHandle.nullDevice }
        // The child kills itself when this process exits (``Bench/main()``): a bench stopped
        // midway had left its children running, disturbing every later measurement.
        process.environment = ProcessInfo.processInfo.environment.merging([Bench.parentVariable: "\(getpid())"]) { $1 }
        try process.run()
    }

    /// Blocks until a whole line arrives (nil at EOF).
    func readLine() -> String? {
        while true {
            if let newline = buffer[(buffer.startIndex + searched)...].firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<newline], as: UTF8.self)
                buffer = Data(buffer[(newline + 1)...])
                searched = 0
                return line
            }
            searched = buffer.count
            let data = pipe.fileHandleForReading.availableData
            if data.isEmpty { return nil }
            buffer.append(data)
        }
    }

    var pid: Int32 { process.processIdentifier }
}

func sayLine(_ text: String) {
    let line = text + "\n"
    _ = line.withCString { write(1, $0, strlen($0)) }
}

/// What a benchmark child prints at the end: the monotonic time its measured work ended, a
/// count (e.g. barriers), then its latencies in ns.
func sayResults(ended: Int64, count: UInt64, latencies: [Int64]) {
    sayLine((["@\(ended)", String(count)] + latencies.map { String($0) }).joined(separator: " "))
}

/// Starts benchmark children that print "ready", releases them together through the shared
/// start flag, and gathers what each prints at the end (``sayResults``). Returns the elapsed
/// time from the start flag to the last child's end of work (not to its exit: formatting and
/// sending thousands of latencies, and the exit, took tens of milliseconds, which weighed on
/// a run of one process far more than on four running side by side), all latencies in one
/// histogram, and the sum of the counts.
///
/// With `duration`, the children run until the stop flag that is set after that many seconds
/// (each stops at its next operation), so that all of them work for the whole measured time:
/// with a fixed count each, the ones the scheduler favoured finished early and the last one
/// ran the tail alone (13 % of a 1-second run of 4 processes on 2 cores), which measured the
/// scheduler's fairness as much as the work.
func runChildren(_ arguments: [[String]], shared: SharedFile, duration: Double? = nil) throws -> (seconds: Double, histogram: Histogram<UInt64>, count: UInt64) {
    let children = try arguments.map { try BenchChild($0) }
    for child in children { _ = child.readLine() }
    pmll_store32(shared.stopFlag, 0)
    let start = monotonicNanoseconds()
    pmll_store32(shared.startFlag, 1)
    if let duration {
        usleep(UInt32(duration * 1e6))
        pmll_store32(shared.stopFlag, 1)
    }
    var histogram = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
    var count: UInt64 = 0, end = start
    for child in children {
        guard let line = child.readLine() else { throw ToolError("a benchmark child failed") }
        var fields = line.split(separator: " ")
        guard let first = fields.first, first.hasPrefix("@"), let ended = Int64(first.dropFirst()) else {
            throw ToolError("a benchmark child printed no end time: \(line.prefix(80))")
        }
        end = max(end, ended)
        fields.removeFirst()
        let numbers = fields.compactMap { UInt64($0) }
        count += numbers.first ?? 0
        for latency in numbers.dropFirst() { _ = histogram.record(latency) }
        child.process.waitUntilExit()
    }
    return (Double(end - start) / 1e9, histogram, count)
}
