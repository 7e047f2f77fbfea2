#if canImport(Glibc)
import Glibc
#endif

/// Runs `body(i)` for i in 0..<count, each on a thread of its own, and returns once every
/// thread has ended and let go of what `body` captured. A Foundation `Thread` keeps its
/// closure until after the thread signals that it is done, so the worker's main thread could
/// return and exit while a worker thread still held the last reference to the Pool: its
/// deinit, and what it reports at close (the audit records it could not log), then never ran.
func runOnJoinedThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Start: @unchecked Sendable {
        let body: @Sendable (Int) -> Void
        let index: Int
        init(_ body: @escaping @Sendable (Int) -> Void, _ index: Int) { self.body = body; self.index = index }
    }
    var threads: [pthread_t] = []
    for i in 0..<count {
        let start = Unmanaged.passRetained(Start(body, i)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { raw in
            let start = Unmanaged<Start>.fromOpaque(raw!).takeRetainedValue()
            start.body(start.index)
            return nil
        }, start)
        guard rc == 0 else {
            Unmanaged<Start>.fromOpaque(start).release()
            fatalError("pthread_create: \(rc)")
        }
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
}
