import ArgumentParser
import CPMLL
import Foundation
import PMLL

/// Loops on one lock, shared `readPercent` % of the time and exclusive otherwise, and checks
/// the exclusion in a file mapped by every worker. Words (u64): 2 violations, 3 shared holds
/// done, 4 exclusive holds done, 5 longest exclusive wait (ns); from word 16, one (pid, state)
/// pair per worker, state `pid << 8 | mode`, mode 1 reading, 2 writing. A reader that finds a
/// live writer inside, or a writer that finds any other live worker inside, counts a violation.
/// Liveness is checked because workers are SIGKILLed inside their sections (their state stays
/// behind). The state names its writer: a worker that takes over a dead one's pair cannot
/// lend its own liveness to the state the dead one left (the pid word and the state word were
/// two stores, and a check between them saw a false violation).
struct ReadWriteMix: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rw-mix")
    @OptionGroup var common: Common
    @Option var file: String
    @Option var readPercent = 90
    @Option var holdMicroseconds = 0
    @Option var seconds: Double = 3600

    static let slots = 64

    func run() throws {
        let (_, lock) = try common.open()
        let fd = open(file, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0, ftruncate(fd, 4096) == 0,
              let base = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else { throw ExitCode(2) }
        let words = base.assumingMemoryBound(to: UInt64.self)
        let me = UInt64(getpid())
        guard let slot = (0..<Self.slots).first(where: { i in
            var seen = words[16 + 2 * i]
            return (seen == 0 || !Self.alive(seen)) && pmll_cas64(words + 16 + 2 * i, &seen, me) != 0
        }) else { throw ExitCode(3) }
        let state = words + 17 + 2 * slot
        // The previous worker may have died inside: its state names it, and goes (its PID could
        // be reused by a live process).
        pmll_store64_release(state, 0)
        // On a violation: words 8... record the first one (my pid, my mode, its pid, its state,
        // its /proc state letter) for the test's message.
        func mark(_ mode: UInt64) { pmll_store64_release(state, mode == 0 ? 0 : me << 8 | mode) }
        func others(_ bad: (UInt64) -> Bool) -> Bool {
            var found: UInt64 = 0
            guard (0..<Self.slots).contains(where: { i in
                found = pmll_load64_acquire(words + 17 + 2 * i)
                return i != slot && bad(found & 0xFF) && Self.alive(found >> 8)
            }) else { return false }
            var none: UInt64 = 0
            if pmll_cas64(words + 8, &none, me) != 0 {
                let other = found >> 8
                words[9] = pmll_load64_acquire(state) & 0xFF
                words[10] = other
                words[11] = found & 0xFF
                let stat = (try? String(contentsOfFile: "/proc/\(other)/stat", encoding: .utf8)) ?? ""
                words[12] = UInt64(stat.lastIndex(of: ")").map { stat.utf8[stat.utf8.index(after: stat.utf8.index(after: $0))] } ?? 0)
            }
            return true
        }
        emit(["event": "started", "pid": Int(getpid())])
        let end = Date().addingTimeInterval(seconds)
        var reads = 0, writes = 0
        while Date() < end {
            if Int.random(in: 0..<100) < readPercent {
                try lock.withSharedLock(timeout: .seconds(60)) { _ in
                    mark(1)
                    if others({ $0 == 2 }) { _ = pmll_fetch_add64(words + 2, 1) }
                    if holdMicroseconds > 0 { usleep(UInt32(holdMicroseconds)) }
                    mark(0)
                }
                _ = pmll_fetch_add64(words + 3, 1)
                reads += 1
            } else {
                let start = DispatchTime.now().uptimeNanoseconds
                try lock.withLock(timeout: .seconds(60)) { _ in
                    let waited = DispatchTime.now().uptimeNanoseconds - start
                    mark(2)
                    if others({ $0 != 0 }) { _ = pmll_fetch_add64(words + 2, 1) }
                    if holdMicroseconds > 0 { usleep(UInt32(holdMicroseconds)) }
                    if others({ $0 != 0 }) { _ = pmll_fetch_add64(words + 2, 1) }
                    mark(0)
                    var seen = words[5]
                    while seen < waited && pmll_cas64(words + 5, &seen, waited) == 0 {}
                }
                _ = pmll_fetch_add64(words + 4, 1)
                writes += 1
            }
        }
        emit(["event": "done", "reads": reads, "writes": writes])
    }

    /// A process that can still run its own code: it exists and has not begun to exit (a
    /// SIGKILLed worker tears down for milliseconds, as PF_EXITING, before it is a zombie; its
    /// lock is rightly taken over as soon as the kernel has released its files).
    static func alive(_ pid: UInt64) -> Bool {
        guard pid != 0, kill(pid_t(pid), 0) == 0 else { return false }
        // Gone between the two looks (reaped): dead.
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        // After ") ": state, ppid, pgrp, session, tty, tpgid, flags (field 9).
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 6, let flags = UInt64(fields[6]) else { return true }
        let exiting: UInt64 = 0x4   // PF_EXITING
        return flags & exiting == 0 && fields[0] != "Z" && fields[0] != "X"
    }
}
