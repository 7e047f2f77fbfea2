#if canImport(Glibc)
import Glibc
#endif
import CPMLL
import PMLL

/// The line `pmll queue exec` prints while it waits: the operation being served, whose end it
/// waits for, and whether that operation's process is stopped (a stopped running operation
/// keeps the turn until it is resumed; a stopped queued one is passed after 50 ms).
enum QueueWaitReport {
    static func print(queue: HardenedQueue, name: String) {
        let me = getpid()
        guard let ahead = queue.records.first(where: { ($0.state == .queued || $0.state == .running) && $0.ownerPid != me }) else { return }
        // The record names the pid only: a pid reused since would at worst be described wrongly.
        let stopped = pmll_process_stopped(ahead.ownerPid, 0) == 1 ? ", stopped" : ""
        printError("pmll: waiting in queue '\(name)' behind ticket \(ahead.ticket) '\(ahead.kind)' of pid \(ahead.ownerPid) (\(ahead.ownerCommand), \(ahead.state.rawValue)\(stopped))")
    }
}
