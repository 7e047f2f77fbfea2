import CPMLL
import CPMLLPeers
import Foundation
import Histogram
import PMLL
import PMLLStressSupport

/// SIGKILL of a holder until a waiting process owns the lock (and knows the owner died).
enum Takeover {
    struct Row: Codable {
        let kind: String
        let rounds: Int
        let p50Microseconds: Double
        let p99Microseconds: Double
        let maxMicroseconds: Double
        let ownerDeathReported: Int
    }

    /// The kinds: "pmll" and "pthread" (holder and waiter both this benchmark's executable, a
    /// Swift process of five threads); "pmll-cli" and "pthread-small" (the holder a small
    /// process: `pmll lock` running `sleep`, or `pmll-bench-holder`, one C thread; the waiters
    /// as before); "exit" and "exit-cli" (no waiter: how long either PMLL holder takes to exit
    /// after SIGKILL, until its pidfd fires).
    static let kinds = ["pmll", "pthread", "pmll-cli", "pthread-small", "exit", "exit-cli"]

    /// The C holder, built beside this benchmark (`--pmll` names only the `pmll` to measure).
    private static var benchHolder: String { besideThisExecutable("pmll-bench-holder") }

    /// A holder of the lock: "held" once it holds it, and the pid of a process to kill after
    /// the round besides the holder (the `sleep` a `pmll lock` runs).
    private static func holder(cli: Bool, kind: String, directory: String, pmll: String) throws -> (BenchChild, pid_t?) {
        if kind == "pthread-small" {
            let holder = try BenchChild([directory + "/takeover-pthread.shm"], executable: benchHolder)
            guard holder.readLine() == "held" else { throw ToolError("pmll-bench-holder failed") }
            return (holder, nil)
        }
        guard cli else {
            let holder = try BenchChild(["takeover-child", "--kind", kind, "--directory", directory, "--role", "holder"])
            guard holder.readLine() == "held" else { throw ToolError("holder failed") }
            return (holder, nil)
        }
        let holder = try BenchChild(["lock", "--pool", directory + "/bench.pool", "--level", "package", "bench/takeover", "--",
                                     "/bin/sh", "-c", "echo held $$; exec sleep 60"], executable: pmll, quiet: true)
        guard let line = holder.readLine(), line.hasPrefix("held "), let command = pid_t(line.dropFirst(5)) else {
            throw ToolError("pmll lock holder failed")
        }
        return (holder, command)
    }

    static func run(kind: String, rounds: Int, directory: String, pmll: String) throws -> Row {
        // The waiter's kind (the small holders take the same locks as the big ones).
        let waiterKind = kind == "pmll-cli" ? "pmll" : kind == "pthread-small" ? "pthread" : kind
        let shared = try SharedFile(directory + "/takeover-\(waiterKind).shm", create: true)
        if kind.hasPrefix("pthread") { precondition(peers_robust_init(shared.base) == 0) }
        _ = try Pool.open(path: directory + "/bench.pool")
        let cli = kind.hasSuffix("-cli")
        for (needed, product) in [(cli, pmll), (kind == "pthread-small", benchHolder)] where needed {
            guard access(product, X_OK) == 0 else {
                throw ToolError("no executable at \(product) (build it: swift build -c release --product \(URL(fileURLWithPath: product).lastPathComponent))")
            }
        }
        var histogram = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
        var reported = 0
        for _ in 0..<rounds {
            if kind.hasPrefix("exit") {
                // The floor of any takeover that waits for the kernel to release the holder's
                // files (OFD byte, pidfd): the pmll holder's own exit, watched by a pidfd.
                let (holder, command) = try Self.holder(cli: cli, kind: "pmll", directory: directory, pmll: pmll)
                let pidfd = pmll_pidfd_open(holder.pid)   // our unreaped child: its PID cannot be reused
                let killedAt = monotonicNanoseconds()
                kill(holder.pid, SIGKILL)
                var poller = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                _ = poll(&poller, 1, 5000)
                _ = histogram.record(UInt64(max(0, monotonicNanoseconds() - killedAt)))
                close(pidfd)
                // Foundation reaps a child only once its output pipe closes, and the holder's
                // `sleep` keeps it open.
                if let command { kill(command, SIGKILL) }
                holder.process.waitUntilExit()
                reported += 1
                continue
            }
            let (holder, command) = try Self.holder(cli: cli, kind: kind, directory: directory, pmll: pmll)
            let waiter = try BenchChild(["takeover-child", "--kind", waiterKind, "--directory", directory, "--role", "waiter"])
            guard waiter.readLine() == "waiting" else { throw ToolError("waiter failed") }
            usleep(20_000)   // let the waiter go to sleep in the kernel
            let killedAt = monotonicNanoseconds()
            kill(holder.pid, SIGKILL)
            guard let line = waiter.readLine(), let parts = Optional(line.split(separator: " ")), parts.count == 2,
                  let acquiredAt = Int64(parts[0]) else { throw ToolError("waiter gave no time") }
            if parts[1] == "died" { reported += 1 }
            _ = histogram.record(UInt64(max(0, acquiredAt - killedAt)))
            if let command { kill(command, SIGKILL) }
            holder.process.waitUntilExit()
            waiter.process.waitUntilExit()
        }
        return Row(kind: kind, rounds: rounds,
                   p50Microseconds: Double(histogram.valueAtPercentile(50)) / 1000,
                   p99Microseconds: Double(histogram.valueAtPercentile(99)) / 1000,
                   maxMicroseconds: Double(histogram.max) / 1000,
                   ownerDeathReported: reported)
    }

    static func child(kind: String, directory: String, role: String) throws {
        let shared = try SharedFile(directory + "/takeover-\(kind).shm", create: false)
        if kind == "pmll" {
            let lock = try Pool.open(path: directory + "/bench.pool").lock(named: "bench/takeover", level: .package)
            if role == "holder" {
                try lock.withLock { _ in
                    sayLine("held")
                    sleep(60)
                }
            } else {
                sayLine("waiting")
                let died = try lock.withLock { grant in
                    let now = monotonicNanoseconds()
                    return (now, grant.previousOwnerDeath != nil)
                }
                sayLine("\(died.0) \(died.1 ? "died" : "clean")")
            }
        } else {
            if role == "holder" {
                _ = peers_robust_lock(shared.base)
                sayLine("held")
                sleep(60)
            } else {
                sayLine("waiting")
                let rc = peers_robust_lock(shared.base)
                let now = monotonicNanoseconds()
                _ = peers_robust_unlock(shared.base)
                sayLine("\(now) \(rc == 1 ? "died" : "clean")")
            }
        }
    }
}
