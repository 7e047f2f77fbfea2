import CPMLL
import Foundation
import PMLL
import PMLLCore
import Testing

/// The `/proc` check a waiter makes before it takes a lock over from an owner whose exit word
/// fired (exitcheck.c): never early. It says "cannot run" only once every thread has begun to
/// exit or is gone, and its descriptors, opened while the owner lived, keep naming that process.
@Suite("Exit check")
struct ExitCheckTests {
    static func startTime(_ pid: Int32) -> UInt64? {
        let start = ProcessIdentity.startTime(pid: "\(pid)")
        return start == 0 ? nil : start
    }

    static func eventually(_ check: OpaquePointer, is expected: Int32) -> Bool {
        let end = Date().addingTimeInterval(10)
        while Date() < end {
            if pmll_exit_check_run(check, 0) == expected { return true }
            usleep(1_000)
        }
        return false
    }

    @Test(arguments: ["sleep 30", "while :; do :; done"])
    func aLiveProcessCanRunUntilItIsKilled(script: String) throws {
        let child = try Child("/bin/sh", ["-c", script])
        defer { child.stopIfRunning() }
        let start = try #require(Self.startTime(child.pid))
        let check = try #require(pmll_exit_check_open(child.pid, start, 0))
        defer { pmll_exit_check_close(check) }
        for _ in 0..<20 { #expect(pmll_exit_check_run(check, 0) == 0) }
        // Stopped is not dying: SIGCONT would let it run again.
        child.kill(SIGSTOP)
        usleep(20_000)
        #expect(pmll_exit_check_run(check, 0) == 0)
        child.kill(SIGKILL)
        #expect(Self.eventually(check, is: 1), "the killed process never looked past its exit")
        child.wait()
        // Reaped: still "cannot run" (gone), from the descriptors opened before.
        #expect(pmll_exit_check_run(check, 0) == 1)
    }

    /// A killed thread that waits for the CPU the check runs on (state R, not running) can
    /// reach user space only through the kernel's signal check: the check says so at once
    /// instead of waiting until that thread has had a CPU and begun to exit. Without the rule
    /// the first check after the kill says "can run" (the killed loop has not run since).
    @Test func aKilledThreadWaitingForTheCheckersCPUCannotRunAgain() throws {
        let cpu = pmll_thread_pin_here()
        try #require(cpu >= 0)
        defer { pmll_thread_unpin() }
        var atOnce = 0
        for _ in 0..<5 {
            // A loop that shares this thread's CPU at idle priority: while this thread runs, the
            // loop waits, and its SIGKILL does not preempt this thread (a normal-priority loop's
            // would, and it would exit before the check).
            let child = try Child("/usr/bin/taskset", ["-c", "\(cpu)", "/usr/bin/chrt", "--idle", "0", "/bin/sh", "-c", "while :; do :; done"])
            defer { child.stopIfRunning() }
            usleep(50_000)
            let start = try #require(Self.startTime(child.pid))
            let check = try #require(pmll_exit_check_open(child.pid, start, 0))
            defer { pmll_exit_check_close(check) }
            // Alive, no SIGKILL: it can run, waiting for the CPU or not.
            #expect(pmll_exit_check_run(check, 0) == 0)
            child.kill(SIGKILL)
            if pmll_exit_check_run(check, 0) == 1 { atOnce += 1 }
            // The check left this test's own pin in place (a nested pin keeps the outer one).
            #expect(Self.allowedCPUs() == "\(cpu)")
            #expect(Self.eventually(check, is: 1))
            child.wait()
        }
        // The loop runs only if this thread is preempted (by another task) between the kill and the check.
        #expect(atOnce >= 4, "only \(atOnce) of 5 checks right after the kill saw the waiting thread as unable to run")
    }

    /// Where a waiter sleeps: the owner's exit-watch thread is pinned to the CPU it started on
    /// (its exit, and often the owner's teardown, runs there), and a waiter about to sleep on
    /// that owner steps off that CPU, its own CPU mask unchanged, so that the kernel wakes it
    /// elsewhere first (Benchmarks.md, "pattern 2").
    @Test func theExitWatchThreadIsPinnedAndAWaiterStepsOffItsCPU() throws {
        let scratch = Scratch()
        let holder = try Self.lockHolder(scratch)
        defer { holder.stopIfRunning() }
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(holder.pid)/task").filter { $0 != "\(holder.pid)" }
        #expect(tasks.count == 1, "one thread besides the main one: \(tasks)")
        for tid in tasks {
            let status = try String(contentsOfFile: "/proc/\(holder.pid)/task/\(tid)/status", encoding: .utf8)
            let allowed = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
            let cpu = pmll_thread_cpu(holder.pid, Int32(tid)!)
            #expect(cpu >= 0 && allowed?.hasSuffix("\t\(cpu)") == true, "the exit-watch thread runs on \(cpu), allowed \(allowed ?? "?")")
        }

        let mask = Self.allowedCPUs()
        try #require(mask != nil && mask!.contains(where: { $0 == "-" || $0 == "," }), "needs two CPUs: \(mask ?? "?")")
        for _ in 0..<5 {
            let here = Self.currentCPU()
            pmll_thread_step_off(here)
            #expect(Self.currentCPU() != here, "still on CPU \(here)")
            #expect(Self.allowedCPUs() == mask)
        }
    }

    /// A check told that the exit word fired does not read the exit-watch thread (the word
    /// fires from that thread's exit) and lists the threads once, but still reads every other
    /// thread: a live holder with a fired word can still run. The skipped thread must be one
    /// of the process's threads when the check was opened.
    @Test func aFiredExitWordSkipsOnlyItsOwnThread() throws {
        let scratch = Scratch()
        let holder = try Self.lockHolder(scratch)
        defer { holder.stopIfRunning() }
        let end = Date().addingTimeInterval(20)
        let watchThread = try #require(try FileManager.default.contentsOfDirectory(atPath: "/proc/\(holder.pid)/task").compactMap { Int32($0) }.first { $0 != holder.pid })
        let start = try #require(Self.startTime(holder.pid))
        let live = try #require(pmll_exit_check_open(holder.pid, start, watchThread))
        defer { pmll_exit_check_close(live) }
        #expect(pmll_exit_check_run(live, 1) == 0, "the holder's main thread can run")

        // A process whose main thread has ended (a zombie leader) and whose one other thread
        // sleeps: it can run, unless that thread is the one whose exit word fired.
        let script = """
            import ctypes, threading, time, sys
            def sleeper():
                sys.stdout.write("tid %d\\n" % threading.get_native_id()); sys.stdout.flush()
                time.sleep(30)
            threading.Thread(target=sleeper).start()
            time.sleep(0.1)
            ctypes.CDLL(None).pthread_exit(None)
            """
        let child = try Child("/usr/bin/python3", ["-c", script])
        defer { child.stopIfRunning() }
        while !child.stdout.hasPrefix("tid ") && Date() < end { usleep(10_000) }
        let sleeper = try #require(child.stdout.split(separator: " ").last.flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        while Date() < end, let stat = try? String(contentsOfFile: "/proc/\(child.pid)/stat", encoding: .utf8), !stat.contains(") Z ") { usleep(10_000) }
        let childStart = try #require(Self.startTime(child.pid))
        let watched = try #require(pmll_exit_check_open(child.pid, childStart, sleeper))
        defer { pmll_exit_check_close(watched) }
        #expect(pmll_exit_check_run(watched, 0) == 0, "the sleeping thread can run")
        #expect(pmll_exit_check_run(watched, 1) == 1, "the thread whose exit word fired was read")
        #expect(pmll_exit_check_run(watched, 0) == 0)
        let stranger = try #require(pmll_exit_check_open(child.pid, childStart, pmll_thread_id()))
        defer { pmll_exit_check_close(stranger) }
        #expect(pmll_exit_check_run(stranger, 1) == 0, "a TID that is not the process's was trusted")
    }

    /// SIGKILL among a thread's own pending signals, read from its stat's field 31 (what lets
    /// the check skip the status file), counted after the last ')' of a command that has some.
    @Test func theStatLineSaysWhetherSIGKILLIsPending() throws {
        func line(signal: UInt64) -> String {
            let fields = (4...52).map { $0 == 31 ? String(signal) : String($0) }
            return "4242 (a) b (c) R " + fields.joined(separator: " ") + "\n"
        }
        #expect(line(signal: 256).withCString { pmll_proc_stat_sigkill($0) } == 1)              // SIGKILL alone
        #expect(line(signal: 256 | 1 << 14).withCString { pmll_proc_stat_sigkill($0) } == 1)    // with SIGTERM
        #expect(line(signal: 1 << 14).withCString { pmll_proc_stat_sigkill($0) } == 0)
        #expect("4242 (x) R 1 2 3".withCString { pmll_proc_stat_sigkill($0) } == -1)
        let own = try String(contentsOfFile: "/proc/thread-self/stat", encoding: .utf8)
        #expect(own.withCString { pmll_proc_stat_sigkill($0) } == 0)
    }

    /// A `pmll lock` process (its main thread and its exit-watch thread) holding a lock while
    /// its command sleeps, once it holds it.
    static func lockHolder(_ scratch: Scratch) throws -> Child {
        let holder = try Child(Binaries.pmll, ["lock", "--pool", scratch.file("p.pool"), "l", "--", "sh", "-c", "echo held; exec sleep 30"])
        let end = Date().addingTimeInterval(20)
        while !holder.stdout.contains("held") && Date() < end { usleep(10_000) }
        return holder
    }

    /// The CPU this thread runs on (field 39 of its own stat).
    static func currentCPU() -> Int32 {
        let stat = (try? String(contentsOfFile: "/proc/thread-self/stat", encoding: .utf8)) ?? ""
        return stat.withCString { pmll_proc_stat_processor($0) }
    }

    /// The calling thread's CPUs, as `/proc/thread-self/status` lists them.
    static func allowedCPUs() -> String? {
        let status = (try? String(contentsOfFile: "/proc/thread-self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
        return line.map { $0.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces) }
    }

    /// Descriptors of this process open on `/proc/PID/...`.
    static func descriptors(on pid: Int32) -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return fds.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + $0))?.hasPrefix("/proc/\(pid)/") ?? false }.count
    }

    /// A waiter that took a lock over leaves its watch's descriptors to be closed by the next
    /// watch this process starts (not between the takeover and its critical section): the
    /// descriptors of one dead holder are gone once the waiter has watched the next one.
    @Test func aTakeoverLeavesItsDescriptorsToTheNextWatch() throws {
        let scratch = Scratch()
        let path = scratch.file("w.pool")
        let lock = try Pool.open(path: path).lock(named: "w", level: .package)
        var holders: [Int32] = []
        for round in 0..<3 {
            let holder = try Child.worker("hold", "--pool", path, "--lock", "w")
            _ = try #require(holder.waitForEvent("acquired"))
            holders.append(holder.pid)
            // Killed while this thread waits (the watch begins after one owner-check interval).
            let killer = Thread { usleep(100_000); holder.kill() }
            killer.start()
            let died = try lock.withLock { grant in grant.previousOwnerDeath != nil }
            #expect(died, "round \(round): the holder's death was not reported")
            holder.wait()
            if round > 0 {
                #expect(Self.descriptors(on: holders[round - 1]) == 0, "round \(round): the previous dead holder's descriptors are still open")
            }
            #expect(Self.descriptors(on: holder.pid) <= 17)
        }
    }

    @Test func anotherProcessUnderThePIDIsRefused() throws {
        let child = try Child("/bin/sh", ["-c", "sleep 30"])
        defer { child.stopIfRunning() }
        let start = try #require(Self.startTime(child.pid))
        #expect(pmll_exit_check_open(child.pid, start + 1, 0) == nil)
        #expect(pmll_exit_check_open(Int32.max, start, 0) == nil)
    }
}
