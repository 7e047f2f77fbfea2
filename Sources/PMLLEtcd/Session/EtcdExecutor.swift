import Foundation
import PMLLCore

/// The thread the etcd backend's own steps run on (acquisition, release, commits, watches,
/// recovery), so that they go on when the application keeps Swift's few cooperative threads
/// busy or blocked: a release that waited seconds for a cooperative thread would hold the lock
/// for everybody, on every machine. Application code (lock bodies, transaction bodies,
/// handlers) runs where the caller runs. Found by the test suite: with 2 cooperative threads
/// held by blocking tests, a 300 ms lock timeout took 55 s.
public final class EtcdExecutor: TaskExecutor, @unchecked Sendable {
    /// One per process.
    public static let shared = EtcdExecutor()

    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []

    private init() {
        let thread = Thread { [unowned self] in self.run() }
        thread.name = "pmll-etcd"
        thread.start()
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    private func run() {
        let executor = asUnownedTaskExecutor()
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch { job.runSynchronously(on: executor) }
        }
    }
}

/// Runs `operation` with the backend's executor preferred (its awaits resume there).
func onEtcdExecutor<T>(_ operation: () async throws(PMLLError) -> T) async throws(PMLLError) -> T {
    try await withTaskExecutorPreference(EtcdExecutor.shared, operation: operation)
}
