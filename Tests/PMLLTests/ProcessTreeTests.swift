import Foundation
import PMLLStressSupport
import Testing

/// The helpers that start children and kill a child and everything below it. A survivor
/// keeps the child's output pipes open, so reading the child's output to its end waits for the
/// survivor: what made recovery-policy tests wait 60 s for a SIGKILLed `pmll queue exec`.
@Suite("Process trees")
struct ProcessTreeTests {
    /// Suites start children from several threads at once: a descriptor the test process has
    /// open, close-on-exec or not, must not reach a child, or the child keeps another child's
    /// pipe (or, with Foundation's `Process`, its exit-watch socket) open for as long as it
    /// lives (a reader that had exited "did not exit within 60 s" in CI).
    @Test func aChildInheritsOnlyItsStandardDescriptors() throws {
        var leak: [Int32] = [0, 0]
        try #require(pipe(&leak) == 0)   // not close-on-exec, as Foundation's socket pair
        defer { close(leak[0]); close(leak[1]) }
        let child = try Child("/bin/sh", ["-c", "ls /proc/$$/fd; echo done"])
        #expect(child.wait(timeout: 10) == 0)
        let fds = child.stdout.split(separator: "\n").map(String.init)
        // ls's own directory descriptor is in its listing, not the shell's.
        #expect(fds == ["0", "1", "2", "done"], "\(fds)")
        let ended = try Child("/bin/sh", ["-c", "exit 3"])
        #expect(ended.wait(timeout: 10) == 3)
        let killed = try Child("/bin/sleep", ["30"])
        killed.kill()
        #expect(killed.wait(timeout: 10) == 128 + SIGKILL)
    }

    /// A shell that keeps forking: a single snapshot of its children misses the next fork.
    static let forker = "i=0; while [ $i -lt 400 ]; do sleep 30 & i=$((i+1)); done; sleep 30"

    @Test(arguments: [false, true])
    func aTreeThatKeepsForkingIsKilledWhole(parentFirst: Bool) throws {
        for _ in 0..<5 {
            let child = try Child("/bin/sh", ["-c", Self.forker])
            usleep(20_000)   // the loop is forking
            if parentFirst { child.killParentFirst() } else { child.killTree() }
            let start = Date()
            child.wait(timeout: 10)
            #expect(Date().timeIntervalSince(start) < 5, "a process of the tree survived the kill")
        }
    }

    @Test func freezeStopsEveryProcessOfTheTree() throws {
        let child = try Child("/bin/sh", ["-c", Self.forker])
        defer { child.stopIfRunning() }
        // Forking: on a busy machine (CI, 2026-12-06) the shell had not forked once 20 ms after
        // it was started, and the tree was the shell alone.
        let forking = Date().addingTimeInterval(10)
        while ProcessTree.descendants(of: child.pid).isEmpty && Date() < forking { usleep(1_000) }
        let tree = ProcessTree.freeze(child.pid)
        #expect(tree.first == child.pid && tree.count > 1)
        usleep(50_000)
        #expect(ProcessTree.descendants(of: child.pid).count == tree.count - 1, "nothing forked while frozen")
        // Every one stops (on a busy machine a process with a pending stop may wait to be run).
        let end = Date().addingTimeInterval(10)
        while !tree.allSatisfy(ProcessTree.isStoppedOrGone) && Date() < end { usleep(10_000) }
        for pid in tree { #expect(ProcessTree.isStoppedOrGone(pid), "\(pid) still runs") }
        child.killTree()
        child.wait(timeout: 10)
    }
}
