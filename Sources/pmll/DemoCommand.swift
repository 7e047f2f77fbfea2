#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import CPMLL
import PMLL

/// The README's main job: several processes contend for one lock on the default pool, one
/// is SIGKILLed while it holds the lock, and a survivor takes over, is told, and repairs.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Show processes contending for a lock, one killed while holding it, and the takeover."
    )

    @OptionGroup var poolArguments: PoolArguments
    @Option(help: "Worker processes.") var workers = 4
    @Option(help: "Critical sections per worker.") var iterations = 15
    @Option(help: "Milliseconds each critical section takes.") var holdMilliseconds = 20

    func validate() throws {
        guard (2...64).contains(workers), (1...10_000).contains(iterations), (1...1000).contains(holdMilliseconds) else {
            throw ValidationError("need 2-64 workers, 1-10000 iterations, 1-1000 ms")
        }
    }

    func run() throws {
        let pool = try poolArguments.open()
        let lock = try pool.lock(named: DemoFiles.lockName, level: .package)
        let files = try DemoFiles(poolPath: pool.path, reset: true)
        say("pool \(pool.path)\(pool.openReport.created ? " (created)" : ""); \(workers) worker processes contend for lock '\(lock.id.name)', \(iterations) critical sections each, \(holdMilliseconds) ms per section")

        var children: [pid_t] = []
        for id in 1...workers {
            children.append(try ChildProcess.spawn(["/proc/self/exe", "demo-worker", "--pool", pool.path, "--id", "\(id)", "--iterations", "\(iterations)",
                                                    "--hold-milliseconds", "\(holdMilliseconds)", "--parent", "\(getpid())"]))
        }
        let pids = Set(children)

        // Kill whichever worker holds the lock once the demo is under way.
        usleep(UInt32(holdMilliseconds * workers * 2000))
        var victim: Int32 = 0
        var killedAt: Int64 = 0
        for _ in 0..<2000 where victim == 0 {
            // Stopped, the holder cannot release: if it still holds after SIGSTOP, it dies
            // holding (on a busy machine this process can be preempted between reading the
            // holder and signalling it, for longer than a critical section).
            if let holder = lock.currentHolder, pids.contains(holder.pid), kill(holder.pid, SIGSTOP) == 0 {
                if lock.currentHolder?.pid == holder.pid {
                    victim = holder.pid
                    // Stamped before the signal: the survivor may see the death before kill() returns.
                    killedAt = pmll_clock_realtime_ns()
                    kill(victim, SIGKILL)
                    say("SIGKILL worker pid \(victim) while it holds '\(lock.id.name)'")
                } else {
                    kill(holder.pid, SIGCONT)
                }
            } else {
                usleep(500)
            }
        }
        var statuses: [pid_t: Int32] = [:]
        for child in children { statuses[child] = (try? ChildProcess.wait(child).exitStatus) ?? 71 }

        let counter = files.readCounter(), logged = files.logLines()
        let status = pool.status().locks.first { $0.name == lock.id.name }
        if let death = status?.lastOwnerDeath, victim != 0, death.pid == victim {
            let latency = Double(death.detectedAtNanoseconds - killedAt) / 1e6
            say("takeover: the next holder detected the death of pid \(victim) \(latency.fixed(2)) ms after the kill")
        }
        if let status {
            say("lock statistics: \(status.acquisitions) acquisitions, \(status.contended) contended, \(status.ownerDeaths) owner deaths, max wait \(status.maxWaitNanoseconds / 1_000_000) ms")
        }
        let failed = children.filter { $0 != victim && statuses[$0] != 0 }
        if counter == logged && failed.isEmpty && victim != 0 {
            say("verdict: OK — counter \(counter) equals the \(logged) logged critical sections; no update lost, the dead holder's unfinished section was repaired")
        } else {
            say("verdict: FAILED — counter \(counter), logged \(logged), failed workers \(failed.count), victim \(victim)")
            throw ExitCode(1)
        }
    }
}

struct DemoWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "demo-worker", abstract: "One process of `pmll demo`.", shouldDisplay: false)

    @OptionGroup var poolArguments: PoolArguments
    @Option var id: Int
    @Option var iterations: Int
    @Option var holdMilliseconds: Int
    @Option(help: "Exit when this process (the demo) does.") var parent: Int32?

    func run() throws {
        if let parent { _ = pmll_die_with_parent(parent) }
        let pool = try poolArguments.open()
        let lock = try pool.lock(named: DemoFiles.lockName, level: .package)
        let files = try DemoFiles(poolPath: pool.path, reset: false)
        for step in 1...iterations {
            try lock.withLock(timeout: .seconds(60)) { grant in
                if let death = grant.previousOwnerDeath {
                    // The dead holder may have bumped the counter without logging its step:
                    // the log is the truth, the counter is derived from it.
                    let before = files.readCounter(), after = files.logLines()
                    files.writeCounter(after)
                    say("worker \(id) (pid \(getpid())): \(death); repaired counter \(before) -> \(after) from the log")
                }
                let value = files.readCounter()
                usleep(UInt32(holdMilliseconds * 1000))
                files.writeCounter(value + 1)
                files.appendLog("\(id) \(step)\n")
            }
            if step % 5 == 0 || step == iterations { say("worker \(id) (pid \(getpid())): \(step)/\(iterations) done") }
            usleep(UInt32.random(in: 0...2000))
        }
    }
}

/// The state the demo's lock protects: a counter file and an append-only log next to the pool.
struct DemoFiles {
    static let lockName = "demo/counter"
    let counter: Int32
    let log: Int32

    init(poolPath: String, reset: Bool) throws {
        let directory = poolPath + ".demo"
        mkdir(directory, 0o700)
        let flags = O_RDWR | O_CREAT | O_CLOEXEC | (reset ? O_TRUNC : 0)
        counter = open(directory + "/counter", flags, 0o600)
        log = open(directory + "/log", flags | O_APPEND, 0o600)
        guard counter >= 0, log >= 0 else { throw CommandFailure(message: "cannot create demo files in \(directory)", status: 73) }
    }

    func readCounter() -> Int {
        var buffer = [UInt8](repeating: 0, count: 20)
        let n = pread(counter, &buffer, 20, 0)
        return n > 0 ? Int(String(decoding: buffer[..<n], as: UTF8.self).trimmingBlanks) ?? 0 : 0
    }

    /// One pwrite of a fixed-width number: a SIGKILL cannot tear it.
    func writeCounter(_ value: Int) {
        let text = Array(String(value).padded(to: 20).utf8)
        _ = pwrite(counter, text, 20, 0)
    }

    func appendLog(_ line: String) { _ = write(log, line, line.utf8.count) }

    func logLines() -> Int {
        var st = stat()
        fstat(log, &st)
        var buffer = [UInt8](repeating: 0, count: Int(st.st_size))
        let n = pread(log, &buffer, buffer.count, 0)
        return n > 0 ? buffer[..<n].filter { $0 == UInt8(ascii: "\n") }.count : 0
    }
}

/// One whole line per write, so lines from several processes never interleave.
func say(_ line: String) {
    let text = "\(line)\n"
    _ = text.withCString { write(1, $0, strlen($0)) }
}
