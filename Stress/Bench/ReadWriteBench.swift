import CPMLL
import CPMLLPeers
import Foundation
import PMLL
import PMLLStressSupport

/// Shared/exclusive locks against their peers, in the same run on the same directory:
/// glibc's process-shared pthread_rwlock (readers preferred, its default) and flock(2)
/// LOCK_SH/LOCK_EX.
enum ReadWriteBench {
    static let kinds = ["pmll", "rwlock", "flock"]

    struct MixRow: Codable {
        let kind: String
        let processes: Int
        let readPercent: Int
        let operationsPerSecond: Double
        /// Exclusive holds per second among them: a lock that starves writers shows few.
        let writesPerSecond: Double
        let exclusionViolated: Bool
    }

    struct StarvationRow: Codable {
        let kind: String
        let readers: Int
        let readerHoldMicroseconds: Int
        let attempts: Int
        /// Longest and median wait of a writer, capped at `capSeconds` (then it starved).
        let maxWaitMilliseconds: Double
        let medianWaitMilliseconds: Double
        let starved: Int
        let capSeconds: Double
    }

    /// P processes, each `readPercent` % shared holds, the rest exclusive, empty sections.
    static func mix(kind: String, processes: Int, readPercent: Int, seconds: Double, directory: String) throws -> MixRow {
        let shared = try SharedFile(directory + "/rw-\(kind).shm", create: true)
        if kind == "rwlock" { precondition(peers_rwlock_init(shared.base) == 0) }
        _ = try Pool.open(path: directory + "/bench.pool")
        let children = try (0..<processes).map { i in
            try BenchChild(["rw-child", "--kind", kind, "--directory", directory, "--index", "\(i)", "--read-percent", "\(readPercent)"])
        }
        for child in children { _ = child.readLine() }
        let start = monotonicNanoseconds()
        pmll_store32(shared.startFlag, 1)
        usleep(UInt32(seconds * 1e6))
        pmll_store32(shared.stopFlag, 1)
        for child in children { child.process.waitUntilExit() }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        let total = (0..<processes).map { Double(shared.counter(2 + $0).pointee) }.reduce(0, +)
        let writes = Double(shared.counter(100).pointee)
        return MixRow(kind: kind, processes: processes, readPercent: readPercent, operationsPerSecond: total / elapsed,
                      writesPerSecond: writes / elapsed, exclusionViolated: shared.counter(1).pointee != 0)
    }

    static func child(kind: String, directory: String, index: Int, readPercent: Int) throws {
        let shared = try SharedFile(directory + "/rw-\(kind).shm", create: false)
        let inside = shared.counter(0), violations = shared.counter(1), mine = shared.counter(2 + index), writes = shared.counter(100)
        let lock = try Pool.open(path: directory + "/bench.pool").lock(named: "bench/rw", level: .package)
        let fd = open(directory + "/rw.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        var random = SplitMix(seed: UInt64(index) &+ 1)
        // inside: readers count in the low 32 bits, a writer adds 1 << 32.
        func read() {
            if pmll_fetch_add64(inside, 1) >> 32 != 0 { _ = pmll_fetch_add64(violations, 1) }
            _ = pmll_fetch_add64(inside, UInt64.max)
        }
        func write() {
            if pmll_fetch_add64(inside, 1 << 32) != 0 { _ = pmll_fetch_add64(violations, 1) }
            _ = pmll_fetch_add64(inside, 0 &- (1 << 32))
        }
        sayLine("ready")
        while pmll_load32(shared.startFlag) == 0 { usleep(100) }
        while pmll_load32(shared.stopFlag) == 0 {
            let reading = Int(random.next() % 100) < readPercent
            switch kind {
            case "pmll":
                if reading { try lock.withSharedLock { _ in read() } } else { try lock.withLock { _ in write() } }
            case "rwlock":
                _ = reading ? peers_rwlock_rdlock(shared.base) : peers_rwlock_wrlock(shared.base)
                if reading { read() } else { write() }
                _ = peers_rwlock_unlock(shared.base)
            default:
                _ = peers_flock(fd, reading ? peers_lock_sh() : peers_lock_ex())
                if reading { read() } else { write() }
                _ = peers_flock(fd, peers_lock_un())
            }
            mine.pointee &+= 1
            if !reading { _ = pmll_fetch_add64(writes, 1) }
        }
    }

    /// `readers` processes keep the lock held shared without a gap (each holds
    /// `holdMicroseconds`, re-taking it at once, staggered); a writer then asks for it
    /// `attempts` times. Kernel shared locks grant every new reader while the writer waits.
    static func starvation(kind: String, readers: Int = 3, holdMicroseconds: Int = 2000, attempts: Int = 5,
                           capSeconds: Double = 2, directory: String) throws -> StarvationRow {
        let shared = try SharedFile(directory + "/starve-\(kind).shm", create: true)
        if kind == "rwlock" { precondition(peers_rwlock_init(shared.base) == 0) }
        _ = try Pool.open(path: directory + "/bench.pool")
        let children = try (0..<readers).map { i in
            try BenchChild(["starve-child", "--kind", kind, "--directory", directory, "--index", "\(i)", "--hold-microseconds", "\(holdMicroseconds)"])
        }
        for child in children { _ = child.readLine() }
        pmll_store32(shared.startFlag, 1)
        usleep(200_000)
        let lock = try Pool.open(path: directory + "/bench.pool").lock(named: "bench/starve", level: .package)
        let fd = open(directory + "/starve.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(fd) }
        var waits: [Double] = []
        var starved = 0
        for _ in 0..<attempts {
            let start = monotonicNanoseconds()
            var got = true
            switch kind {
            case "pmll":
                got = (try? lock.withLock(timeout: .nanoseconds(Int64(capSeconds * 1e9))) { _ in }) != nil
            case "rwlock":
                got = peers_rwlock_timedwrlock(shared.base, Int64(capSeconds * 1e9)) == 0
                if got { _ = peers_rwlock_unlock(shared.base) }
            default:
                // flock has no timed wait: poll with LOCK_NB until the cap (a blocking LOCK_EX
                // waiter is starved the same way; polling only lets the run end).
                got = false
                while Double(monotonicNanoseconds() - start) / 1e9 < capSeconds {
                    if peers_flock(fd, peers_lock_ex() | peers_lock_nb()) == 0 {
                        _ = peers_flock(fd, peers_lock_un())
                        got = true
                        break
                    }
                    usleep(50)
                }
            }
            let waited = Double(monotonicNanoseconds() - start) / 1e6
            if !got { starved += 1 }
            waits.append(min(waited, capSeconds * 1000))
            usleep(20_000)
        }
        pmll_store32(shared.stopFlag, 1)
        for child in children { child.process.waitUntilExit() }
        let sorted = waits.sorted()
        return StarvationRow(kind: kind, readers: readers, readerHoldMicroseconds: holdMicroseconds, attempts: attempts,
                             maxWaitMilliseconds: sorted.last ?? 0, medianWaitMilliseconds: sorted[sorted.count / 2],
                             starved: starved, capSeconds: capSeconds)
    }

    static func starveChild(kind: String, directory: String, index: Int, holdMicroseconds: Int) throws {
        let shared = try SharedFile(directory + "/starve-\(kind).shm", create: false)
        let lock = try Pool.open(path: directory + "/bench.pool").lock(named: "bench/starve", level: .package)
        let fd = open(directory + "/starve.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        sayLine("ready")
        while pmll_load32(shared.startFlag) == 0 { usleep(100) }
        usleep(UInt32(holdMicroseconds * index / 3))   // staggered: some reader is always inside
        while pmll_load32(shared.stopFlag) == 0 {
            switch kind {
            case "pmll":
                _ = try? lock.withSharedLock(timeout: .seconds(10)) { _ in usleep(UInt32(holdMicroseconds)) }
            case "rwlock":
                _ = peers_rwlock_rdlock(shared.base)
                usleep(UInt32(holdMicroseconds))
                _ = peers_rwlock_unlock(shared.base)
            default:
                _ = peers_flock(fd, peers_lock_sh())
                usleep(UInt32(holdMicroseconds))
                _ = peers_flock(fd, peers_lock_un())
            }
        }
    }
}
