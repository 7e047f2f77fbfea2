import CPMLL
import Foundation
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
            if pmll_exit_check_run(check) == expected { return true }
            usleep(1_000)
        }
        return false
    }

    @Test(arguments: ["sleep 30", "while :; do :; done"])
    func aLiveProcessCanRunUntilItIsKilled(script: String) throws {
        let child = try Child("/bin/sh", ["-c", script])
        defer { child.stopIfRunning() }
        let start = try #require(Self.startTime(child.pid))
        let check = try #require(pmll_exit_check_open(child.pid, start))
        defer { pmll_exit_check_close(check) }
        for _ in 0..<20 { #expect(pmll_exit_check_run(check) == 0) }
        // Stopped is not dying: SIGCONT would let it run again.
        child.kill(SIGSTOP)
        usleep(20_000)
        #expect(pmll_exit_check_run(check) == 0)
        child.kill(SIGKILL)
        #expect(Self.eventually(check, is: 1), "the killed process never looked past its exit")
        child.wait()
        // Reaped: still "cannot run" (gone), from the descriptors opened before.
        #expect(pmll_exit_check_run(check) == 1)
    }

    @Test func anotherProcessUnderThePIDIsRefused() throws {
        let child = try Child("/bin/sh", ["-c", "sleep 30"])
        defer { child.stopIfRunning() }
        let start = try #require(Self.startTime(child.pid))
        #expect(pmll_exit_check_open(child.pid, start + 1) == nil)
        #expect(pmll_exit_check_open(Int32.max, start) == nil)
    }
}
