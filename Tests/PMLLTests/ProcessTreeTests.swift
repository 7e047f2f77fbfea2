import Foundation
import PMLLStressSupport
import Testing

/// The helpers that kill a child and everything below it. A survivor keeps Foundation's
/// exit-watch socket open, so the killed child still looks alive to `Process` until the
/// survivor exits: what made recovery-policy tests wait 60 s for a SIGKILLed `pmll queue exec`.
@Suite("Process trees")
struct ProcessTreeTests {
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
        usleep(20_000)
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
