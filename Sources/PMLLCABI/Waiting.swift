#if canImport(Glibc)
import Glibc
#endif

/// A pthread mutex and condition variable at a fixed address: what promises and queue
/// threads of the C interface wait on (C callers block in them, never a Swift executor).
final class Condition: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        cond.deallocate()
    }

    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    func broadcast() { pthread_cond_broadcast(cond) }

    /// With the lock held: waits until `done()` or the CLOCK_MONOTONIC `deadline` (ns; .max:
    /// none). Returns `done()`.
    func wait(until deadline: Int64, _ done: () -> Bool) -> Bool {
        while !done() {
            if deadline == .max {
                pthread_cond_wait(cond, mutex)
            } else {
                var t = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
                if pthread_cond_timedwait(cond, mutex, &t) == ETIMEDOUT { return done() }
            }
        }
        return true
    }
}

/// Runs async library code from a plain thread of the C interface and waits for it there.
/// The async code waits on the library's waiter thread, so no cooperative thread blocks.
func blocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    try blocking(serving: CallerThread(), body)
}

/// The C thread waiting in ``blocking(serving:_:)``, lent to the async work for the C callbacks
/// it must run: they run on the caller's own thread, in order, while the work waits for them.
final class CallerThread: @unchecked Sendable {
    private let condition = Condition()
    // Guarded by `condition`.
    private var requests: [@Sendable () -> Void] = []
    private var finished = false

    /// Runs `work` on the caller's thread and returns its result.
    func perform<R: Sendable>(_ work: @escaping @Sendable () -> R) async -> R {
        await withCheckedContinuation { (continuation: CheckedContinuation<R, Never>) in
            condition.withLock {
                requests.append { continuation.resume(returning: work()) }
                condition.broadcast()
            }
        }
    }

    func finish() {
        condition.withLock {
            finished = true
            condition.broadcast()
        }
    }

    /// Runs requests until the work has finished and none is left.
    func serve() {
        while true {
            let next = condition.withLock { () -> (@Sendable () -> Void)? in
                _ = condition.wait(until: .max) { !requests.isEmpty || finished }
                return requests.isEmpty ? nil : requests.removeFirst()
            }
            guard let next else { return }
            next()
        }
    }
}

/// ``blocking(_:)`` whose work may ask `caller` to run things on the calling thread meanwhile.
func blocking<T: Sendable>(serving caller: CallerThread, _ body: @escaping @Sendable () async throws -> T) throws -> T {
    let box = ResultBox<T>()
    Task {
        do { box.result = .success(try await body()) } catch { box.result = .failure(error) }
        caller.finish()
    }
    caller.serve()
    return try box.result!.get()
}

/// Written by the task before it finishes the caller's wait, read after the wait (under its lock).
private final class ResultBox<T>: @unchecked Sendable {
    var result: Result<T, any Error>?
}
