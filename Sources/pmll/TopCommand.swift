#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import PMLL

struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "Live view of the busiest locks and queues (q or Ctrl-C quits).",
        discussion: """
            Refreshes every --interval seconds: per lock its state, holder, waiters and rates \
            (acquisitions, contended acquisitions, timeouts per second, owner deaths); per queue its \
            depth, operations and failures per second and mean wait. Sorted busiest first. Works \
            over ssh (plain ANSI escapes, the terminal restored on exit). --batch prints plain \
            screens one after another, for logs and scripts.

            \(ExitStatus.summary)
            """
    )

    @OptionGroup var poolArguments: PoolArguments
    @Option(help: ArgumentHelp("Seconds between screens.", valueName: "SECONDS")) var interval: Double = 1
    @Option(help: "Rows of locks and of queues shown.") var rows = 10
    @Flag(help: "Plain screens on standard output, no terminal control.") var batch = false
    @Option(help: "Stop after this many screens.") var iterations: Int?

    func validate() throws {
        guard interval.isFinite, interval >= 0.05, interval <= 3600 else { throw ValidationError("--interval must be 0.05 to 3600 seconds") }
        guard rows >= 1 else { throw ValidationError("--rows must be at least 1") }
        if let iterations, iterations < 1 { throw ValidationError("--iterations must be at least 1") }
    }

    func run() throws {
        // Status 128 + N for signal N, as a process ended by it in a handler would report;
        // here only once `show` has released the pool.
        if let signal = try show() { Glibc.exit(128 + signal) }
    }

    /// The screens until q, the last iteration, or a signal (returned).
    private func show() throws -> Int32? {
        let stop = TopStop()
        let pool = try poolArguments.open(create: false)
        let terminal = !batch && isatty(0) != 0 && isatty(1) != 0 ? RawTerminal.enter() : nil
        defer { terminal?.leave() }
        var previous: TopScreen.Sample?
        var shown = 0
        while true {
            let sample = TopScreen.Sample(status: pool.status(includingSelf: false), at: TopScreen.now())
            let width = terminal?.columns ?? 1000
            let lines = TopScreen.render(sample, previous: previous, rows: rows).map { String($0.prefix(width)) }
            if terminal != nil {
                // Home, each line cleared to its end, the rest of the screen cleared.
                TopScreen.write("\u{1B}[H" + lines.map { $0 + "\u{1B}[K" }.joined(separator: "\r\n") + "\u{1B}[J")
            } else {
                TopScreen.write(lines.joined(separator: "\n") + "\n\n")
            }
            shown += 1
            if let iterations, shown >= iterations { return nil }
            previous = sample
            if let terminal {
                if terminal.waitForQuit(seconds: interval, stop: stop) { return stop.signal }
            } else if stop.sleep(seconds: interval) {
                return stop.signal
            }
        }
    }
}

enum TopScreen {
    struct Sample {
        let status: PoolStatus
        let at: Double
    }

    static func now() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }

    static func write(_ text: String) {
        var bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(1, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            done += n
        }
    }

    static func render(_ sample: Sample, previous: Sample?, rows: Int) -> [String] {
        let s = sample.status
        let dt = previous.map { max(1e-3, sample.at - $0.at) }
        func rate(_ now: UInt64, _ before: UInt64?) -> Double? {
            guard let dt, let before, now >= before else { return nil }
            return Double(now - before) / dt
        }
        func show(_ r: Double?) -> String { r.map { $0.fixed($0 < 10 ? 1 : 0) } ?? "-" }

        let alive = s.processes.filter(\.alive).count
        var lines = ["pmll top — \(s.path): \(alive) processes, \(s.locks.count) locks, \(s.queues.count) queues" +
                     (s.transactions.map { ", \($0.commits) commits" } ?? "") + (previous == nil ? "   (rates from the next screen)" : "")]
        let before = Dictionary(uniqueKeysWithValues: (previous?.status.locks ?? []).map { ($0.name, $0) })
        let locks = s.locks.map { lock -> (LockStatus, Double?) in
            (lock, rate(lock.acquisitions &+ lock.shared.acquisitions, before[lock.name].map { $0.acquisitions &+ $0.shared.acquisitions }))
        }.sorted { ($0.1 ?? 0, $0.0.waiters, $0.0.acquisitions) > ($1.1 ?? 0, $1.0.waiters, $1.0.acquisitions) }
        var table = [["LOCK", "STATE", "HOLDER", "WAITERS", "ACQ/S", "CONT/S", "TIMEOUT/S", "DEATHS", "AVG WAIT"]]
        for (lock, acquisitions) in locks.prefix(rows) {
            let old = before[lock.name]
            let contended = lock.contended + lock.shared.contended
            let avg = contended > 0 ? (Double(lock.totalWaitNanoseconds) / Double(max(1, lock.contended)) / 1e6).fixed(2) + " ms" : "-"
            table.append([lock.name, lock.state.rawValue,
                          lock.holder.map { "\($0.pid) \($0.commandName)" } ?? (lock.readers.isEmpty ? "-" : "\(lock.readers.count) readers"),
                          "\(lock.waiters)", show(acquisitions),
                          show(rate(contended, old.map { $0.contended + $0.shared.contended })),
                          show(rate(lock.timeouts, old?.timeouts)), "\(lock.ownerDeaths)", avg])
        }
        lines += TableText.render(table).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if s.locks.count > rows { lines.append("… \(s.locks.count - rows) more locks") }
        lines.append("")
        let queuesBefore = Dictionary(uniqueKeysWithValues: (previous?.status.queues ?? []).map { ($0.name, $0) })
        let queues = s.queues.map { q -> (QueueStats, Double?) in
            (q, rate(q.completed + q.failed, queuesBefore[q.name].map { $0.completed + $0.failed }))
        }.sorted { ($0.1 ?? 0, $0.0.pending) > ($1.1 ?? 0, $1.0.pending) }
        var qtable = [["QUEUE", "DEPTH", "OPS/S", "FAILED/S", "RETRIED", "ABANDONED", "MEAN WAIT", "MEAN RUN"]]
        for (q, ops) in queues.prefix(rows) {
            qtable.append([q.name, "\(q.pending)", show(ops), show(rate(q.failed, queuesBefore[q.name]?.failed)), "\(q.retried)", "\(q.abandoned)",
                           (Double(q.meanWaitNanoseconds) / 1e6).fixed(2) + " ms", (Double(q.meanRunNanoseconds) / 1e6).fixed(2) + " ms"])
        }
        lines += s.queues.isEmpty ? ["no queues"] : TableText.render(qtable).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        return lines
    }
}

/// The terminal in the mode `top` needs: the alternate screen, no cursor, keys read one by one
/// without echo (Ctrl-C arrives as a key, so quitting always restores the terminal). SIGTERM
/// and SIGHUP restore it too: they end the loop (``TopStop``), which leaves the terminal.
final class RawTerminal: @unchecked Sendable {
    private var saved = termios()

    static func enter() -> RawTerminal? {
        let terminal = RawTerminal()
        guard tcgetattr(0, &terminal.saved) == 0 else { return nil }
        var raw = terminal.saved
        raw.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG)
        withUnsafeMutableBytes(of: &raw.c_cc) { cc in
            cc[Int(VMIN)] = 0
            cc[Int(VTIME)] = 0
        }
        guard tcsetattr(0, TCSANOW, &raw) == 0 else { return nil }
        TopScreen.write("\u{1B}[?1049h\u{1B}[?25l\u{1B}[H\u{1B}[2J")
        return terminal
    }

    var columns: Int {
        var size = winsize()
        return ioctl(1, UInt(TIOCGWINSZ), &size) == 0 && size.ws_col > 0 ? Int(size.ws_col) : 1000
    }

    /// Waits up to `seconds` for a key; true for q, Q or Ctrl-C, or a signal to stop.
    func waitForQuit(seconds: Double, stop: TopStop) -> Bool {
        let end = TopScreen.now() + seconds
        while true {
            if stop.signal != nil { return true }
            let left = end - TopScreen.now()
            if left <= 0 { return false }
            var fds = [pollfd(fd: 0, events: Int16(POLLIN), revents: 0), pollfd(fd: stop.descriptor, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, Int32(left * 1000) + 1)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            if fds[0].revents == 0 { continue }   // the signal: seen at the top
            var buffer = [UInt8](repeating: 0, count: 64)
            let got = read(0, &buffer, buffer.count)
            if got == 0 { return true }   // end of input: nobody can press q any more
            if got > 0 && buffer.prefix(got).contains(where: { $0 == UInt8(ascii: "q") || $0 == UInt8(ascii: "Q") || $0 == 3 }) { return true }
        }
    }

    func leave() {
        TopScreen.write("\u{1B}[?25h\u{1B}[?1049l")
        _ = tcsetattr(0, TCSANOW, &saved)
    }
}
