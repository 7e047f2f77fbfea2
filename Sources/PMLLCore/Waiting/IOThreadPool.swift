import CPMLL
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The library's one pool of threads for blocking file-system calls (file batches' staging,
/// fsyncs, unlinks, freeing old inodes). File-system calls block, so more threads than cores
/// make them overlap; Dispatch does not reliably grow past the core count for blocking work,
/// and starting a thread per call costs tens of microseconds. Threads are started on first need, at
/// most `width`, and then wait for work, never exiting.
///
/// A job is `count` independent calls of `body(i)`. The caller of ``run(_:_:)`` works on its
/// own job too, so a job never waits for a free thread to make progress.
package final class IOThreadPool: @unchecked Sendable {
    package static let shared = IOThreadPool(width: 16)

    package let width: Int
    private let jobs = Mutex<[Job]>([])
    private let started = Atomic<Int>(0)
    /// Bumped and woken whenever a job arrives.
    private let bell: UnsafeMutablePointer<UInt32>

    init(width: Int) {
        self.width = width
        bell = .allocate(capacity: 1)
        bell.initialize(to: 0)
    }

    /// Calls `body(0..<count)` on the pool and the calling thread, and returns when all are done.
    package func run(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
        if count <= 0 { return }
        if count == 1 { return body(0) }
        let job = submit(count, body)
        job.work()
        job.wait()
    }

    /// Starts `body(0..<count)` on the pool and returns at once; call the result to wait.
    package func start(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) -> () -> Void {
        if count <= 0 { return {} }
        let job = submit(count, body)
        return { job.work(); job.wait() }
    }

    private func submit(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) -> Job {
        let job = Job(count: count, body: body)
        jobs.withLock { $0.append(job) }
        grow(to: min(width, count))
        _ = pmll_add32(bell, 1)
        _ = pmll_futex_wake_private(bell, Int32(min(width, count)))
        return job
    }

    /// Starts threads until `n` exist. A thread that cannot be started leaves the work to the
    /// others and to the caller, which always works on its own job.
    private func grow(to n: Int) {
        while true {
            let have = started.load(ordering: .relaxed)
            guard have < n else { return }
            guard started.compareExchange(expected: have, desired: have + 1, ordering: .relaxed).exchanged else { continue }
            var thread = pthread_t()
            var attributes = pthread_attr_t()
            pthread_attr_init(&attributes)
            pthread_attr_setstacksize(&attributes, 256 << 10)
            let context = Unmanaged.passRetained(self).toOpaque()
            let rc = pthread_create(&thread, &attributes, { context in
                pmll_thread_set_name("pmll-io")
                Unmanaged<IOThreadPool>.fromOpaque(context!).takeUnretainedValue().loop()
            }, context)
            pthread_attr_destroy(&attributes)
            if rc != 0 {
                Unmanaged<IOThreadPool>.fromOpaque(context).release()
                _ = started.add(-1, ordering: .relaxed)
                return
            }
            pthread_detach(thread)
        }
    }

    private func loop() -> Never {
        while true {
            let rung = pmll_load32(bell)
            let job = jobs.withLock { jobs -> Job? in
                jobs.removeAll { $0.allTaken }
                return jobs.first
            }
            if let job { job.work() } else { _ = pmll_futex_wait_private(bell, rung, -1) }
        }
    }

    private final class Job: @unchecked Sendable {
        let count: Int
        let body: @Sendable (Int) -> Void
        let next = Atomic<Int>(0)
        let finished = Atomic<Int>(0)
        /// 1 once every call has returned (a futex word).
        let done: UnsafeMutablePointer<UInt32>

        init(count: Int, body: @escaping @Sendable (Int) -> Void) {
            self.count = count
            self.body = body
            done = .allocate(capacity: 1)
            done.initialize(to: 0)
        }

        deinit { done.deallocate() }

        var allTaken: Bool { next.load(ordering: .relaxed) >= count }

        func work() {
            while true {
                let i = next.add(1, ordering: .relaxed).oldValue
                if i >= count { return }
                body(i)
                if finished.add(1, ordering: .acquiringAndReleasing).newValue == count {
                    pmll_store32(done, 1)
                    _ = pmll_futex_wake_private(done, Int32.max)
                }
            }
        }

        func wait() {
            while pmll_load32(done) == 0 { _ = pmll_futex_wait_private(done, 0, -1) }
        }
    }
}
