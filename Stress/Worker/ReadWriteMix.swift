import ArgumentParser
import CPMLL
import Foundation
import PMLL

/// Loops on one lock, shared `readPercent` % of the time and exclusive otherwise, and checks
/// the exclusion in a file mapped by every worker (u64 each): readers inside, writers inside,
/// violations, shared holds done, exclusive holds done, longest exclusive wait (ns).
/// A reader that sees a writer inside, or a writer that sees anyone else inside, counts a
/// violation. With `--seconds`, stops after that long and prints its counts.
struct ReadWriteMix: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rw-mix")
    @OptionGroup var common: Common
    @Option var file: String
    @Option var readPercent = 90
    @Option var holdMicroseconds = 0
    @Option var seconds: Double = 3600

    func run() throws {
        let (_, lock) = try common.open()
        let fd = open(file, O_RDWR | O_CREAT, 0o600)
        guard fd >= 0, ftruncate(fd, 4096) == 0,
              let base = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), base != MAP_FAILED else { throw ExitCode(2) }
        let words = base.assumingMemoryBound(to: UInt64.self)
        func add(_ i: Int, _ v: UInt64) -> UInt64 { pmll_fetch_add64(words + i, v) }
        emit(["event": "started", "pid": Int(getpid())])
        let end = Date().addingTimeInterval(seconds)
        var reads = 0, writes = 0
        while Date() < end {
            if Int.random(in: 0..<100) < readPercent {
                try lock.withSharedLock(timeout: .seconds(60)) { _ in
                    _ = add(0, 1)
                    if add(1, 0) != 0 { _ = add(2, 1) }
                    if holdMicroseconds > 0 { usleep(UInt32(holdMicroseconds)) }
                    _ = add(0, UInt64.max)
                }
                _ = add(3, 1)
                reads += 1
            } else {
                let start = DispatchTime.now().uptimeNanoseconds
                try lock.withLock(timeout: .seconds(60)) { _ in
                    let waited = DispatchTime.now().uptimeNanoseconds - start
                    if add(1, 1) != 0 || add(0, 0) != 0 { _ = add(2, 1) }
                    if holdMicroseconds > 0 { usleep(UInt32(holdMicroseconds)) }
                    if add(0, 0) != 0 { _ = add(2, 1) }
                    _ = add(1, UInt64.max)
                    var seen = words[5]
                    while seen < waited && pmll_cas64(words + 5, &seen, waited) == 0 {}
                }
                _ = add(4, 1)
                writes += 1
            }
        }
        emit(["event": "done", "reads": reads, "writes": writes])
    }
}

